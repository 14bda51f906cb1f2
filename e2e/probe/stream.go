package probe

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Environment variables of the stream roles.
const (
	EchoModeEnv = "SLUICE_TEST_ECHO"  // echo: read (read/write loop), splice (io.Copy, which splices) or relay
	UpstreamEnv = "SLUICE_TEST_RELAY" // echo in relay mode: where each connection is relayed to
	ConnsEnv    = "SLUICE_TEST_CONNS" // exchange, httphold: concurrent connections
	SizesEnv    = "SLUICE_TEST_SIZES" // exchange: comma-separated bytes per connection, used in turn
)

// echoRole accepts connections on ListenEnv and sends every byte back until
// the client half-closes, then closes its own side. In read mode it copies
// with read(2) and write(2); in splice mode with io.Copy between the TCP
// connection and itself, which Go does with splice(2); in relay mode it
// relays each connection to UpstreamEnv with io.Copy both ways (splice),
// as a Go TCP proxy does.
func echoRole() int {
	mode := os.Getenv(EchoModeEnv)
	ln, err := net.Listen("tcp", os.Getenv(ListenEnv))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println("ready")
	for {
		c, err := ln.Accept()
		if err != nil {
			return 1
		}
		go func() {
			defer c.Close()
			tc := c.(*net.TCPConn)
			switch mode {
			case "sink":
				_, _ = io.CopyBuffer(io.Discard, struct{ io.Reader }{tc}, make([]byte, 64<<10))
			case "oneshot":
				// One request, one answer, and the server closes first
				// (TIME_WAIT stays on the server's side).
				buf := make([]byte, 64)
				if n, err := tc.Read(buf); err == nil {
					_, _ = tc.Write(buf[:n])
				}
				return
			case "splice":
				_, _ = io.Copy(tc, tc)
			case "relay":
				up, err := net.Dial("tcp", os.Getenv(UpstreamEnv))
				if err != nil {
					return
				}
				defer up.Close()
				done := make(chan struct{})
				go func() {
					_, _ = io.Copy(tc, up.(*net.TCPConn))
					_ = tc.CloseWrite()
					close(done)
				}()
				_, _ = io.Copy(up.(*net.TCPConn), tc)
				_ = up.(*net.TCPConn).CloseWrite()
				<-done
				return
			default:
				buf := make([]byte, 32<<10)
				_, _ = io.CopyBuffer(struct{ io.Writer }{tc}, struct{ io.Reader }{tc}, buf)
			}
			_ = tc.CloseWrite()
		}()
	}
}

// Exchange is what the exchange role saw, printed as JSON.
type Exchange struct {
	Conns    int
	OK       int
	Failures []string
	Sent     int64 // bytes sent over all connections
	Received int64 // bytes received back
	Locals   []string
	MS       float64
}

// pattern is n deterministic bytes that differ between connections, so
// that bytes delivered to the wrong connection or out of order are seen.
func pattern(conn, n int) []byte {
	b := make([]byte, n)
	x := uint32(conn*2654435761 + 1)
	for i := range b {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		b[i] = byte(x)
	}
	return b
}

// exchangeRole opens ConnsEnv connections to DialEnv at once; each sends
// its share of SizesEnv in writes of varied sizes (from one byte up),
// half-closes, and reads the echo until EOF, which must equal what it
// sent. A connection that makes no progress for 5 s fails.
func exchangeRole() int {
	conns, _ := strconv.Atoi(os.Getenv(ConnsEnv))
	var sizes []int
	for _, f := range strings.Split(os.Getenv(SizesEnv), ",") {
		n, err := strconv.Atoi(f)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bad size", f)
			return 2
		}
		sizes = append(sizes, n)
	}
	start := time.Now()
	var mu sync.Mutex
	res := Exchange{Conns: conns}
	var wg sync.WaitGroup
	for i := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			local, sent, got, err := exchangeOne(os.Getenv(DialEnv), pattern(i, sizes[i%len(sizes)]))
			mu.Lock()
			defer mu.Unlock()
			res.Sent += sent
			res.Received += got
			res.Locals = append(res.Locals, local)
			if err != nil {
				res.Failures = append(res.Failures, fmt.Sprintf("conn %d (%d bytes): %v", i, sizes[i%len(sizes)], err))
				return
			}
			res.OK++
		}()
	}
	wg.Wait()
	res.MS = float64(time.Since(start).Microseconds()) / 1000
	_ = json.NewEncoder(os.Stdout).Encode(res)
	return 0
}

func exchangeOne(addr string, data []byte) (local string, sent, got int64, err error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return "", 0, 0, err
	}
	defer c.Close()
	local = c.LocalAddr().String()
	tc := c.(*net.TCPConn)
	werr := make(chan error, 1)
	go func() {
		// Writes grow from 1 byte, so small and large writes both occur.
		for off, n := 0, 1; off < len(data); n *= 4 {
			end := min(off+n, len(data))
			_ = tc.SetWriteDeadline(time.Now().Add(5 * time.Second))
			w, err := tc.Write(data[off:end])
			sent += int64(w)
			if err != nil {
				werr <- err
				return
			}
			off = end
		}
		werr <- tc.CloseWrite()
	}()
	var back bytes.Buffer
	buf := make([]byte, 64<<10)
	for {
		_ = tc.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, rerr := tc.Read(buf)
		back.Write(buf[:n])
		if errors.Is(rerr, io.EOF) {
			break
		}
		if rerr != nil {
			<-werr
			return local, sent, int64(back.Len()), fmt.Errorf("read after %d bytes: %w", back.Len(), rerr)
		}
	}
	if err := <-werr; err != nil {
		return local, sent, int64(back.Len()), fmt.Errorf("write: %w", err)
	}
	if !bytes.Equal(back.Bytes(), data) {
		return local, sent, int64(back.Len()), fmt.Errorf("echo differs: %d bytes back, %d sent", back.Len(), len(data))
	}
	return local, sent, int64(back.Len()), nil
}

// Environment variables of the load role.
const (
	LoadEnv  = "SLUICE_TEST_LOAD"  // load: rr, bulk or connect
	CountEnv = "SLUICE_TEST_COUNT" // load: round trips, connections, or MiB
)

// Load is what the load role measured, printed as JSON. P50 and P99 are
// the median and 99th percentile time of one round trip (rr) or one
// connection (connect), in microseconds.
type Load struct {
	Ops     int
	Seconds float64
	Errors  int
	P50     float64 `json:",omitempty"`
	P99     float64 `json:",omitempty"`
}

// percentiles sets l's P50 and P99 from the durations d, which it sorts.
func (l *Load) percentiles(d []time.Duration) {
	if len(d) == 0 {
		return
	}
	slices.Sort(d)
	at := func(q float64) float64 { return float64(d[int(q*float64(len(d)-1))].Nanoseconds()) / 1e3 }
	l.P50, l.P99 = at(0.5), at(0.99)
}

// loadRole measures, against DialEnv: rr, CountEnv round trips of 64-byte
// messages on one connection (an echo server); bulk, CountEnv MiB written
// on one connection (a sink), until the server has read it all; connect,
// CountEnv connections, each with one 64-byte request and its answer (a
// oneshot server), two at a time.
func loadRole() int {
	n, _ := strconv.Atoi(os.Getenv(CountEnv))
	addr := os.Getenv(DialEnv)
	var res Load
	var err error
	switch os.Getenv(LoadEnv) {
	case "rr":
		res, err = roundTrips(addr, n)
	case "bulk":
		res, err = bulk(addr, n)
	case "connect":
		res = connects(addr, n)
	default:
		err = fmt.Errorf("unknown load %q", os.Getenv(LoadEnv))
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	_ = json.NewEncoder(os.Stdout).Encode(res)
	return 0
}

func roundTrips(addr string, n int) (Load, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return Load{}, err
	}
	defer c.Close()
	msg, back := make([]byte, 64), make([]byte, 64)
	for range 1000 { // warm-up
		if _, err := c.Write(msg); err != nil {
			return Load{}, err
		}
		if _, err := io.ReadFull(c, back); err != nil {
			return Load{}, err
		}
	}
	took := make([]time.Duration, n)
	start := time.Now()
	last := start
	for i := range n {
		if _, err := c.Write(msg); err != nil {
			return Load{}, err
		}
		if _, err := io.ReadFull(c, back); err != nil {
			return Load{}, err
		}
		now := time.Now()
		took[i], last = now.Sub(last), now
	}
	l := Load{Ops: n, Seconds: last.Sub(start).Seconds()}
	l.percentiles(took)
	return l, nil
}

func bulk(addr string, mib int) (Load, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return Load{}, err
	}
	defer c.Close()
	buf := make([]byte, 1<<20)
	start := time.Now()
	for range mib {
		if _, err := c.Write(buf); err != nil {
			return Load{}, err
		}
	}
	_ = c.(*net.TCPConn).CloseWrite()
	_, _ = c.Read(buf[:1]) // EOF: the sink read everything
	return Load{Ops: mib, Seconds: time.Since(start).Seconds()}, nil
}

func connects(addr string, n int) Load {
	var mu sync.Mutex
	res := Load{Ops: n}
	took := make([]time.Duration, 0, n)
	start := time.Now()
	var wg sync.WaitGroup
	next := make(chan struct{}, n)
	for range n {
		next <- struct{}{}
	}
	close(next)
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			msg, back := make([]byte, 64), make([]byte, 64)
			for range next {
				began := time.Now()
				err := func() error {
					c, err := net.Dial("tcp", addr)
					if err != nil {
						return err
					}
					defer c.Close()
					if _, err := c.Write(msg); err != nil {
						return err
					}
					_, err = io.ReadFull(c, back)
					return err
				}()
				d := time.Since(began)
				mu.Lock()
				if err != nil {
					res.Errors++
				} else {
					took = append(took, d)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	res.Seconds = time.Since(start).Seconds()
	res.percentiles(took)
	return res
}
