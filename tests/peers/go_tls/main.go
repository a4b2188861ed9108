// A Go HTTPS peer for Clew's end-to-end tests (standard library only), so
// that crypto/tls is exercised on both ends:
//
//	go_tls server ADDR CERT KEY   serve /work (200), /fail (500), /echo (POST body back)
//	go_tls client BASE PATH...    GET each path in turn on one kept-alive connection
//
// The client starts once stdin gives it a line (or ends), so that a test
// can let the agent hook the executable before the first request.
//
// HTTP/2 is off on both ends: these tests are about HTTP/1.1 over TLS.
package main

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"os"
)

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: go_tls server ADDR CERT KEY | go_tls client BASE PATH...")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "server":
		serve(os.Args[2], os.Args[3], os.Args[4])
	case "client":
		os.Exit(call(os.Args[2], os.Args[3:]))
	default:
		fmt.Fprintln(os.Stderr, "unknown mode", os.Args[1])
		os.Exit(2)
	}
}

func serve(addr, cert, key string) {
	mux := http.NewServeMux()
	mux.HandleFunc("/work", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "work done\n")
	})
	mux.HandleFunc("/fail", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "failed on purpose", http.StatusInternalServerError)
	})
	mux.HandleFunc("/echo", func(w http.ResponseWriter, r *http.Request) {
		io.Copy(w, r.Body)
	})
	srv := &http.Server{
		Addr:         addr,
		Handler:      mux,
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){},
	}
	fmt.Println("serving", addr)
	if err := srv.ListenAndServeTLS(cert, key); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func call(base string, paths []string) int {
	bufio.NewReader(os.Stdin).ReadString('\n')
	client := &http.Client{Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true},
		TLSNextProto:    map[string]func(string, *tls.Conn) http.RoundTripper{},
		MaxConnsPerHost: 1,
	}}
	for _, p := range paths {
		req, err := http.NewRequest("GET", base+p, nil)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		req.Header.Set("User-Agent", "clew-e2e-go")
		resp, err := client.Do(req)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		// Read to the end so the connection is reused for the next request.
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		fmt.Println(p, resp.StatusCode)
	}
	return 0
}
