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

// Dial runs the client role in pod p against addr, from the current test
// binary, and returns what it saw.
func Dial(p *cluster.Pod, addr string) (Result, error) {
	return DialAs(p, "client", addr)
}

// DialAs is Dial with another client role (client or piggyback).
func DialAs(p *cluster.Pod, role, addr string) (Result, error) {
	cmd := p.Command(context.Background(), os.Args[0])
	cmd.Env = append(os.Environ(), RoleEnv+"="+role, DialEnv+"="+addr)
	out, err := p.Output(cmd)
	if err != nil {
		return Result{}, fmt.Errorf("client in %s: %w", p.Name, err)
	}
	var r Result
	if err := json.Unmarshal(out, &r); err != nil {
		return Result{}, fmt.Errorf("client in %s: %w: %q", p.Name, err, out)
	}
	return r, nil
}

// Exchanges runs the exchange role in pod p: conns concurrent connections
// to addr, each sending its share of sizes and reading the echo back.
func Exchanges(p *cluster.Pod, addr string, conns int, sizes ...int) (Exchange, error) {
	var s []string
	for _, n := range sizes {
		s = append(s, strconv.Itoa(n))
	}
	cmd := p.Command(context.Background(), os.Args[0])
	cmd.Env = append(os.Environ(), RoleEnv+"=exchange", DialEnv+"="+addr,
		ConnsEnv+"="+strconv.Itoa(conns), SizesEnv+"="+strings.Join(s, ","))
	out, err := p.Output(cmd)
	if err != nil {
		return Exchange{}, fmt.Errorf("exchange in %s: %w", p.Name, err)
	}
	var r Exchange
	if err := json.Unmarshal(out, &r); err != nil {
		return Exchange{}, fmt.Errorf("exchange in %s: %w: %q", p.Name, err, out)
	}
	return r, nil
}

// RunLoad runs the load role in pod p: kind rr, bulk or connect, count
// round trips, MiB or connections, against addr.
func RunLoad(p *cluster.Pod, kind, addr string, count int) (Load, error) {
	cmd := p.Command(context.Background(), os.Args[0])
	cmd.Env = append(os.Environ(), RoleEnv+"=load", LoadEnv+"="+kind, DialEnv+"="+addr, CountEnv+"="+strconv.Itoa(count))
	out, err := p.Output(cmd)
	if err != nil {
		return Load{}, fmt.Errorf("%s load in %s: %w", kind, p.Name, err)
	}
	var r Load
	if err := json.Unmarshal(out, &r); err != nil {
		return Load{}, fmt.Errorf("%s load in %s: %w: %q", kind, p.Name, err, out)
	}
	return r, nil
}
