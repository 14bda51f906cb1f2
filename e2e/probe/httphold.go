package probe

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"
)

// PathEnv is the request path (with any query) of the httphold role.
const PathEnv = "SLUICE_TEST_PATH"

// HTTPHold is what the httphold role saw of its requests, printed as JSON.
type HTTPHold struct {
	Conns int         // connections opened
	Codes map[int]int // responses by status code
	Err   string      // the first failure, if any
}

// httpHoldRole opens ConnsEnv TCP connections to DialEnv, one after the
// other, and prints "open". Then it writes one HTTP/1.1 GET of PathEnv on
// every connection at once, prints "sent", reads the responses and prints
// an HTTPHold. Every connection stays open (keep-alive) until stdin ends;
// then it closes them and exits. With a path that makes the server wait
// (?sleep=), all the requests are in flight together for that long.
func httpHoldRole() int {
	addr, path := os.Getenv(DialEnv), os.Getenv(PathEnv)
	n, err := strconv.Atoi(os.Getenv(ConnsEnv))
	if err != nil || n < 1 {
		fmt.Fprintf(os.Stderr, "%s=%q: want a number of connections\n", ConnsEnv, os.Getenv(ConnsEnv))
		return 2
	}
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	d := net.Dialer{Timeout: 5 * time.Second}
	for range n {
		c, err := d.Dial("tcp", addr)
		if err != nil {
			fmt.Fprintf(os.Stderr, "connection %d of %d to %s: %v\n", len(conns)+1, n, addr, err)
			return 1
		}
		conns = append(conns, c)
	}
	fmt.Println("open")
	req := fmt.Sprintf("GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", path, addr)
	for i, c := range conns {
		if _, err := io.WriteString(c, req); err != nil {
			fmt.Fprintf(os.Stderr, "request on connection %d: %v\n", i+1, err)
			return 1
		}
	}
	fmt.Println("sent")
	var mu sync.Mutex
	res := HTTPHold{Conns: n, Codes: map[int]int{}}
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Go(func() {
			_ = c.SetReadDeadline(time.Now().Add(time.Minute))
			code, err := readResponse(c)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if res.Err == "" {
					res.Err = err.Error()
				}
				return
			}
			res.Codes[code]++
		})
	}
	wg.Wait()
	out, _ := json.Marshal(res)
	fmt.Println(string(out))
	_, _ = io.Copy(io.Discard, os.Stdin)
	return 0
}

// readResponse reads one response to a GET from c, body included, so that
// the connection could carry another request.
func readResponse(c net.Conn) (int, error) {
	r, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return 0, err
	}
	defer r.Body.Close()
	if _, err := io.Copy(io.Discard, r.Body); err != nil {
		return 0, err
	}
	return r.StatusCode, nil
}
