package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// ServeBackend serves HTTP on listen, if set, answering every request with
// "<name> <listen address>" (no newline), and UDP on udpListen, if set,
// answering every datagram with "<name>\n". It writes "ready\n" to ready
// once listening and returns when ctx ends.
func ServeBackend(ctx context.Context, name, listen, udpListen string, ready io.Writer) error {
	if listen == "" && udpListen == "" {
		return errors.New("nothing to serve: give --listen, --udp-listen or both")
	}
	var ln net.Listener
	if listen != "" {
		var err error
		if ln, err = net.Listen("tcp", listen); err != nil {
			return fmt.Errorf("backend %s: %w", name, err)
		}
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
	_, _ = io.WriteString(ready, "ready\n")
	if ln == nil {
		<-ctx.Done()
		return nil
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
	if err := srv.Serve(ln); err != http.ErrServerClosed {
		return err
	}
	return nil
}
