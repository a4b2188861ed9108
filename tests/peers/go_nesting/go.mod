module clew.test/go_nesting

go 1.17
