// A Go net/http frontend for Clew's nesting tests (standard library only):
//
//	go_nesting ADDR DOWNSTREAM [direct|fanout|late]
//
// GET /chain/N waits N*7 mod 20 milliseconds, then GETs DOWNSTREAM/work/N
// through one shared http.Client (kept-alive connections, written by the
// transport's own goroutines) and answers 200 once that answered 200.
// The wait differs per request, so concurrent requests' downstream calls
// overlap in varying orders.
//
// fanout: the handler starts two goroutines, one GETting /work/N and one
// /work/N/fan, and answers once both did. late: as direct, and a goroutine
// the handler started GETs /work/N/late once the response was written
// (that call belongs to no request).
package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

var client = &http.Client{
	Transport: &http.Transport{MaxIdleConnsPerHost: 64},
	Timeout:   10 * time.Second,
}

// get GETs url and returns the body if the answer was 200.
func get(url string) ([]byte, error) {
	req, _ := http.NewRequest("GET", url, nil)
	req.Header.Set("User-Agent", "clew-e2e-frontend")
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		return nil, fmt.Errorf("downstream answered %d", resp.StatusCode)
	}
	return body, nil
}

func main() {
	if len(os.Args) != 3 && len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: go_nesting ADDR DOWNSTREAM [direct|fanout|late]")
		os.Exit(2)
	}
	downstream := os.Args[2]
	mode := "direct"
	if len(os.Args) == 4 {
		mode = os.Args[3]
	}
	http.HandleFunc("/chain/", func(w http.ResponseWriter, r *http.Request) {
		n := strings.TrimPrefix(r.URL.Path, "/chain/")
		i, _ := strconv.Atoi(n)
		time.Sleep(time.Duration(i*7%20) * time.Millisecond)
		work := downstream + "/work/" + n
		var body []byte
		var err error
		switch mode {
		case "fanout":
			var wg sync.WaitGroup
			var fanErr error
			wg.Add(2)
			go func() { defer wg.Done(); body, err = get(work) }()
			go func() { defer wg.Done(); _, fanErr = get(work + "/fan") }()
			wg.Wait()
			if err == nil {
				err = fanErr
			}
		case "late":
			done := r.Context().Done()
			go func() {
				// The context ends as the handler returns; the response
				// was flushed before.
				<-done
				time.Sleep(20 * time.Millisecond)
				get(work + "/late")
			}()
			body, err = get(work)
		default:
			body, err = get(work)
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.Write(body)
		w.(http.Flusher).Flush()
	})
	fmt.Println("serving", os.Args[1])
	if err := http.ListenAndServe(os.Args[1], nil); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
