// A Go net/http frontend for Clew's nesting tests (standard library only):
//
//	go_nesting ADDR DOWNSTREAM
//
// GET /chain/N waits N*7 mod 20 milliseconds, then GETs DOWNSTREAM/work/N
// through one shared http.Client (kept-alive connections, written by the
// transport's own goroutines) and answers 200 once that answered 200.
// The wait differs per request, so concurrent requests' downstream calls
// overlap in varying orders.
package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: go_nesting ADDR DOWNSTREAM")
		os.Exit(2)
	}
	downstream := os.Args[2]
	client := &http.Client{
		Transport: &http.Transport{MaxIdleConnsPerHost: 64},
		Timeout:   10 * time.Second,
	}
	http.HandleFunc("/chain/", func(w http.ResponseWriter, r *http.Request) {
		n := strings.TrimPrefix(r.URL.Path, "/chain/")
		i, _ := strconv.Atoi(n)
		time.Sleep(time.Duration(i*7%20) * time.Millisecond)
		req, _ := http.NewRequest("GET", downstream+"/work/"+n, nil)
		req.Header.Set("User-Agent", "clew-e2e-frontend")
		resp, err := client.Do(req)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			http.Error(w, "downstream failed", http.StatusBadGateway)
			return
		}
		w.Write(body)
	})
	fmt.Println("serving", os.Args[1])
	if err := http.ListenAndServe(os.Args[1], nil); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
