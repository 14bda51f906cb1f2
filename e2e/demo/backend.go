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
// "<name> <listen address>" (no newline), and, if udpListen is set, answers
// every datagram there with "<name>\n". It writes "ready\n" to ready once
// listening and returns when ctx ends.
func ServeBackend(ctx context.Context, name, listen, udpListen string, ready io.Writer) error {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("backend %s: %w", name, err)
	}
	if udpListen != "" {
		pc, err := net.ListenPacket("udp", udpListen)
		if err != nil {
			return fmt.Errorf("backend %s: %w", name, err)
		}
		defer pc.Close()
		go func() {
			buf := make([]byte, 1500)
			for {
				_, from, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				_, _ = pc.WriteTo([]byte(name+"\n"), from)
			}
		}()
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
