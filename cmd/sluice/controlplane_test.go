package main

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
)

// The controlplane command refuses flag combinations it cannot serve
// before it touches the network, naming the flags.
func TestControlPlaneFlags(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{nil, "one of --mesh FILE or --kubernetes is required"},
		{[]string{"--kubernetes", "--mesh", "m.yaml"}, "--kubernetes and --mesh are exclusive"},
		{[]string{"--mesh", "m.yaml", "--kubeconfig", "k"}, "--kubeconfig and --trust-domain apply to --kubernetes only"},
		{[]string{"--mesh", "m.yaml", "--trust-domain", "example.org"}, "--kubeconfig and --trust-domain apply to --kubernetes only"},
		{[]string{"--kubernetes", "--config-poll", "2s"}, "--config-poll applies to --mesh only"},
		{[]string{"--kubernetes", "--kubeconfig", "/nonexistent/kubeconfig"}, "--kubeconfig /nonexistent/kubeconfig"},
	} {
		cmd := newControlPlaneCommand()
		cmd.SetArgs(c.args)
		cmd.SetOut(io.Discard)
		cmd.SetErr(io.Discard)
		cmd.SilenceUsage = true
		err := cmd.ExecuteContext(t.Context())
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("controlplane %v: %v, want an error with %q", c.args, err, c.want)
		}
	}
}

// /readyz follows readiness; /healthz is always fine.
func TestHealthEndpoint(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	var ready atomic.Bool
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	stop, err := serveHealth(ctx, slog.New(slog.DiscardHandler), addr, ready.Load)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	get := func(path string) int {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if got := get("/healthz"); got != http.StatusOK {
		t.Errorf("/healthz %d, want 200", got)
	}
	if got := get("/readyz"); got != http.StatusServiceUnavailable {
		t.Errorf("/readyz before ready: %d, want 503", got)
	}
	ready.Store(true)
	if got := get("/readyz"); got != http.StatusOK {
		t.Errorf("/readyz once ready: %d, want 200", got)
	}
}
