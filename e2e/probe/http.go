package probe

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// FlapEnv makes the http role answer every other request with 503.
const FlapEnv = "SLUICE_TEST_FLAP"

// HTTPAnswer is what the http role answers each request with, as JSON.
type HTTPAnswer struct {
	Name    string              `json:"name"`
	Proto   string              `json:"proto"`
	Method  string              `json:"method"`
	Path    string              `json:"path"`
	Host    string              `json:"host"`
	Remote  string              `json:"remote"`
	Headers map[string][]string `json:"headers"`
}

// httpRole serves HTTP/1.1 and HTTP/2 cleartext (prior knowledge) on
// ListenEnv and answers each request with an HTTPAnswer naming NameEnv.
// /status/<code> answers with that code; ?sleep=<duration> waits first.
// With FlapEnv set, every other request gets 503. gRPC requests are
// served by grpc.testing.TestService (grpc.go). It prints "ready" once it
// listens.
func httpRole() int {
	name := os.Getenv(NameEnv)
	flap := os.Getenv(FlapEnv) != ""
	var n atomic.Uint64
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if d, err := time.ParseDuration(r.URL.Query().Get("sleep")); err == nil {
			select {
			case <-time.After(d):
			case <-r.Context().Done():
				return
			}
		}
		code := http.StatusOK
		if c, ok := strings.CutPrefix(r.URL.Path, "/status/"); ok {
			if v, err := strconv.Atoi(c); err == nil {
				code = v
			}
		}
		if flap && n.Add(1)%2 == 1 {
			code = http.StatusServiceUnavailable
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		_ = json.NewEncoder(w).Encode(HTTPAnswer{Name: name, Proto: r.Proto, Method: r.Method, Path: r.URL.RequestURI(),
			Host: r.Host, Remote: r.RemoteAddr, Headers: r.Header})
	})
	// gRPC requests go to the gRPC service, on the same port.
	grpcSrv := newGRPCServer(name)
	web := h
	h = func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor == 2 && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
			grpcSrv.ServeHTTP(w, r)
			return
		}
		web(w, r)
	}
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	srv := &http.Server{Handler: h, Protocols: &protocols, ReadHeaderTimeout: 10 * time.Second}
	l, err := net.Listen("tcp", os.Getenv(ListenEnv))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println("ready")
	if err := srv.Serve(l); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}
