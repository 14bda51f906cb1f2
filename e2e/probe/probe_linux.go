package probe

import (
	"context"
	"encoding/json"
	"fmt"
	"os"

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
