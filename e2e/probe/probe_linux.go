package probe

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/sluice-mesh/sluice/e2e/cluster"
)

// runRole runs role in pod p, from the current test binary, with the
// environment variables env added, and decodes the JSON it prints into out.
func runRole(p *cluster.Pod, role string, out any, env ...string) error {
	cmd := p.Command(context.Background(), os.Args[0])
	cmd.Env = append(append(os.Environ(), RoleEnv+"="+role), env...)
	b, err := p.Output(cmd)
	if err != nil {
		return fmt.Errorf("%s in %s: %w", role, p.Name, err)
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("%s in %s: %w: %q", role, p.Name, err, b)
	}
	return nil
}

// Dial runs the client role in pod p against addr, from the current test
// binary, and returns what it saw.
func Dial(p *cluster.Pod, addr string) (Result, error) {
	return DialAs(p, "client", addr)
}

// DialAs is Dial with another client role (client or piggyback).
func DialAs(p *cluster.Pod, role, addr string) (Result, error) {
	var r Result
	err := runRole(p, role, &r, DialEnv+"="+addr)
	return r, err
}

// Exchanges runs the exchange role in pod p: conns concurrent connections
// to addr, each sending its share of sizes and reading the echo back.
func Exchanges(p *cluster.Pod, addr string, conns int, sizes ...int) (Exchange, error) {
	var s []string
	for _, n := range sizes {
		s = append(s, strconv.Itoa(n))
	}
	var r Exchange
	err := runRole(p, "exchange", &r, DialEnv+"="+addr, ConnsEnv+"="+strconv.Itoa(conns), SizesEnv+"="+strings.Join(s, ","))
	return r, err
}

// RunLoad runs the load role in pod p: kind rr, bulk or connect, count
// round trips, MiB or connections, against addr.
func RunLoad(p *cluster.Pod, kind, addr string, count int) (Load, error) {
	var r Load
	err := runRole(p, "load", &r, LoadEnv+"="+kind, DialEnv+"="+addr, CountEnv+"="+strconv.Itoa(count))
	return r, err
}
