// Package probe is the client and server programs the policy tests run in
// simulated pods: a server that reports how many bytes its application
// received on each connection, and a client that reports how its
// connection went. A test binary runs them through Run.
package probe

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Environment variables that select and configure a role.
const (
	RoleEnv   = "SLUICE_TEST_ROLE"   // server, client, piggyback or hold
	ListenEnv = "SLUICE_TEST_LISTEN" // server: comma-separated listen addresses
	NameEnv   = "SLUICE_TEST_NAME"   // server: its answer
	DialEnv   = "SLUICE_TEST_DIAL"   // client, hold, httphold: address to dial
)

// Run runs the role RoleEnv names, if any, and exits; otherwise it
// returns. Call it first in TestMain.
func Run() {
	if role := os.Getenv(RoleEnv); role != "" {
		os.Exit(run(role))
	}
}

func run(role string) int {
	switch role {
	case "server":
		return serveRole()
	case "client":
		return clientRole(false, false)
	case "piggyback":
		return clientRole(false, true)
	case "hold":
		return clientRole(true, false)
	case "echo":
		return echoRole()
	case "exchange":
		return exchangeRole()
	case "load":
		return loadRole()
	case "http":
		return httpRole()
	case "grpc-client":
		return grpcClientRole()
	case "httphold":
		return httpHoldRole()
	}
	fmt.Fprintln(os.Stderr, "unknown role", role)
	return 2
}

// serveRole accepts connections, answers each line with its name, and
// reports on stdout, once a connection ends, how many bytes the
// application received from it: "conn <remote> <local> <bytes>".
func serveRole() int {
	var out sync.Mutex
	name := os.Getenv(NameEnv)
	for _, addr := range strings.Split(os.Getenv(ListenEnv), ",") {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() {
					defer c.Close()
					_ = c.SetDeadline(time.Now().Add(10 * time.Second))
					n := 0
					r := bufio.NewReader(c)
					for {
						line, err := r.ReadString('\n')
						n += len(line)
						if err != nil {
							break
						}
						if _, err := io.WriteString(c, name+"\n"); err != nil {
							break
						}
					}
					out.Lock()
					fmt.Printf("conn %s %s %d\n", c.RemoteAddr(), c.LocalAddr(), n)
					out.Unlock()
				}()
			}
		}()
	}
	out.Lock()
	fmt.Println("ready")
	out.Unlock()
	select {}
}

// Line is what a client sends.
const Line = "ping\n"

// Result is what a client saw, printed as JSON.
type Result struct {
	Result string  // ok, eperm, reset, refused, timeout or other
	Reply  string  // the server's answer, if ok
	Err    string  // the error, if not ok
	MS     float64 // time from dialing to the result
}

// clientRole dials, sends a line and reads the answer; it prints a Result
// as JSON. With hold, it prints "open" after the answer and keeps the
// connection until it fails (or 15 s pass), and the Result reports that.
// With piggyback, the kernel holds back the ACK that completes the
// handshake and sends it with the line: the first segment the server sees
// after its SYN-ACK carries payload.
func clientRole(hold, piggyback bool) int {
	start := time.Now()
	p := Result{}
	d := net.Dialer{Timeout: 5 * time.Second}
	if piggyback {
		d.Control = delayHandshakeACK
	}
	c, err := d.Dial("tcp", os.Getenv(DialEnv))
	if err == nil {
		_ = c.SetDeadline(time.Now().Add(3 * time.Second))
		r := bufio.NewReader(c)
		if _, err = io.WriteString(c, Line); err == nil {
			var line string
			line, err = r.ReadString('\n')
			p.Reply = strings.TrimSpace(line)
		}
		if hold && err == nil {
			fmt.Println("open")
			start = time.Now()
			_ = c.SetDeadline(time.Now().Add(15 * time.Second))
			_, err = r.ReadString('\n')
		}
		c.Close()
	}
	p.MS = float64(time.Since(start).Microseconds()) / 1000
	var ne net.Error
	switch {
	case err == nil:
		p.Result = "ok"
	case errors.Is(err, syscall.EPERM):
		p.Result = "eperm"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.ECONNABORTED), errors.Is(err, io.EOF):
		p.Result = "reset"
	case errors.Is(err, syscall.ECONNREFUSED):
		p.Result = "refused"
	case errors.As(err, &ne) && ne.Timeout():
		p.Result = "timeout"
	default:
		p.Result = "other"
	}
	if err != nil {
		p.Err = err.Error()
	}
	_ = json.NewEncoder(os.Stdout).Encode(p)
	return 0
}
