module chart_render

go 1.19
