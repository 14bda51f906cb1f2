package demo

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// ServeBackend serves HTTP on listen, answering every request with
// "<name> <listen address>" (no newline). It writes "ready\n" to ready once listening
// and returns when ctx ends.
func ServeBackend(ctx context.Context, name, listen string, ready io.Writer) error {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("backend %s: %w", name, err)
	}
	answer := name + " " + ln.Addr().String()
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			_, _ = io.WriteString(w, answer)
		}),
		ReadHeaderTimeout: 5 * time.Second,
	}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	_, _ = io.WriteString(ready, "ready\n")
	if err := srv.Serve(ln); err != http.ErrServerClosed {
		return err
	}
	return nil
}
