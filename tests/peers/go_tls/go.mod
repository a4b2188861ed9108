module clew.test/go_tls

go 1.17
