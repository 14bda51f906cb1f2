package e2e_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mesh/sluice/e2e/cluster"
	"github.com/sluice-mesh/sluice/e2e/probe"
	"github.com/sluice-mesh/sluice/e2e/testenv"
	"github.com/sluice-mesh/sluice/sockops/flow"
	"github.com/sluice-mesh/sluice/sockops/observe"
)

// startEcho runs the probe's echo role (read mode) on port 7000 in pod.
func startEcho(t *testing.T, pod *cluster.Pod) {
	t.Helper()
	cmd := pod.Command(context.Background(), os.Args[0])
	cmd.Env = append(os.Environ(), probe.RoleEnv+"=echo", probe.ListenEnv+"=0.0.0.0:7000", probe.EchoModeEnv+"=read")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := pod.Start(cmd); err != nil {
		t.Fatal(err)
	}
	line, _ := bufio.NewReader(out).ReadString('\n')
	if line != "ready\n" {
		t.Fatalf("echo in %s: %q", pod.Name, line)
	}
	go io.Copy(io.Discard, out)
}

// httpClient gives up on an agent that does not answer, so a hung agent
// fails the wait it is polled in rather than the whole test binary.
var httpClient = &http.Client{Timeout: 5 * time.Second}

// freePort returns a TCP port on 127.0.0.1 nothing listens on now.
func freePort(t *testing.T) string {
	t.Helper()
	addr, err := cluster.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

// observeJSON runs `sluice observe -o json` with args and decodes its lines.
func observeJSON(t *testing.T, bin, socket string, args ...string) []flow.Flow {
	t.Helper()
	out, err := exec.Command(bin, append([]string{"observe", "--socket", socket, "-o", "json"}, args...)...).Output()
	if err != nil {
		t.Fatalf("sluice observe %v: %v", args, err)
	}
	var flows []flow.Flow
	for dec := json.NewDecoder(bytes.NewReader(out)); dec.More(); {
		var f flow.Flow
		if err := dec.Decode(&f); err != nil {
			t.Fatalf("sluice observe -o json: record %d: %v", len(flows)+1, err)
		}
		flows = append(flows, f)
	}
	return flows
}

// TestAgentFlows runs two agents from one mesh file and checks what users
// observe: flow records with exact byte counts and the fast-path flag, deny
// records naming the policy, `sluice observe` filters, `sluice status`, and
// the Prometheus metrics.
func TestAgentFlows(t *testing.T) {
	testenv.RequirePrivileged(t)
	bin := buildSluice(t)
	nodes, pods := policyCluster(t, []podSpec{
		{"a", "client", "10.244.1.10"}, {"a", "echo", "10.244.1.11"}, {"a", "batch", "10.244.1.12"},
		{"b", "db", "10.244.2.10"},
	})
	serveDB(t, pods["db"])
	startEcho(t, pods["echo"])
	meshFile := filepath.Join(t.TempDir(), "mesh.yaml")
	data := fmt.Sprintf(`workloads:
  - {name: client, namespace: shop, serviceAccount: frontend, node: a, cgroup: %s, ips: [10.244.1.10], fastPath: true}
  - {name: echo, namespace: shop, serviceAccount: echo, node: a, cgroup: %s, ips: [10.244.1.11], fastPath: true}
  - {name: batch, namespace: jobs, serviceAccount: batch, node: a, cgroup: %s, ips: [10.244.1.12]}
  - {name: db, namespace: shop, serviceAccount: db, node: b, cgroup: %s, ips: [10.244.2.10]}
services:
  - name: echo
    namespace: shop
    vips: [10.96.0.40]
    ports: [{port: 80, targetPort: 7000}]
    endpoints: [{address: 10.244.1.11}]
  - name: echo-plain
    namespace: shop
    vips: [10.96.0.41]
    ports: [{port: 80, targetPort: 7000}]
    endpoints: [{address: 10.244.1.11}]
    fastPath: false
  - name: db
    namespace: shop
    vips: [10.96.0.20]
    ports: [{port: 5432}]
    endpoints: [{address: 10.244.2.10}]
    policies:
      - name: only-frontend
        action: ALLOW
        rules: [{name: frontend, from: [{serviceAccounts: [frontend]}]}]
`, pods["client"].Cgroup, pods["echo"].Cgroup, pods["batch"].Cgroup, pods["db"].Cgroup)
	if err := os.WriteFile(meshFile, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	socket := filepath.Join(t.TempDir(), "a.sock")
	metricsAddr := freePort(t)
	logs := map[string]*syncBuffer{
		"a": startAgent(t, bin, nodes["a"], "a", "--mesh", meshFile, "--socket", socket, "--metrics-addr", metricsAddr),
		"b": startAgent(t, bin, nodes["b"], "b", "--mesh", meshFile),
	}
	get := func(path string) (int, string) {
		resp, err := httpClient.Get("http://" + metricsAddr + path)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	waitFor(t, logs, "agent a ready", func() bool { code, _ := get("/readyz"); return code == http.StatusOK })
	waitFor(t, logs, "agent b enforces", func() bool {
		r, err := probe.Dial(pods["batch"], "10.96.0.20:5432")
		return err == nil && r.Result == "eperm"
	})

	sizes := []int{1000, 200000}
	ex, err := probe.Exchanges(pods["client"], "10.96.0.40:80", 4, sizes...)
	if err != nil || ex.OK != 4 {
		t.Fatalf("exchanges through the echo service: %+v, %v", ex, err)
	}
	plain, err := probe.Exchanges(pods["client"], "10.96.0.41:80", 2, sizes...)
	if err != nil || plain.OK != 2 {
		t.Fatalf("exchanges through the echo-plain service: %+v, %v", plain, err)
	}
	if r, err := probe.Dial(pods["client"], "10.96.0.20:5432"); err != nil || r.Result != "ok" {
		t.Fatalf("client → db across nodes: %+v, %v", r, err)
	}

	t.Run("closes carry exact bytes and the fast path", func(t *testing.T) {
		var flows []flow.Flow
		waitFor(t, logs, "4 source-side closes to echo", func() bool {
			flows = observeJSON(t, bin, socket, "--last", "1000", "--to-service", "echo", "--from-workload", "shop/client")
			n := 0
			for _, f := range flows {
				if f.Event == flow.EventClose && f.Reporter == flow.ReporterSource {
					n++
				}
			}
			return n == 4
		})
		bySource := map[string]flow.Flow{}
		for _, f := range flows {
			if f.Service == nil || f.Service.Name != "shop/echo" || f.Source.Workload != "client" || f.Source.Namespace != "shop" {
				t.Errorf("filter let through %+v", f)
			}
			if f.Event == flow.EventClose && f.Reporter == flow.ReporterSource {
				bySource[f.Source.Address.String()] = f
			}
		}
		var sent uint64
		for _, local := range ex.Locals {
			f, ok := bySource[local]
			if !ok {
				t.Errorf("no close record from %s", local)
				continue
			}
			sent += f.BytesSent
			if f.BytesSent != f.BytesRecv || (f.BytesSent != 1000 && f.BytesSent != 200000) {
				t.Errorf("%s: %d bytes sent, %d received; want one of %v each way", local, f.BytesSent, f.BytesRecv, sizes)
			}
			if !f.FastPath || f.Destination.Workload != "echo" || f.Source.Identity != "spiffe://cluster.local/ns/shop/sa/frontend" || f.Node != "a" {
				t.Errorf("%s: %+v", local, f)
			}
		}
		if sent != uint64(ex.Sent) {
			t.Errorf("records count %d bytes sent, the client sent %d", sent, ex.Sent)
		}
	})
	t.Run("a service with the fast path off keeps its connections off it", func(t *testing.T) {
		var flows []flow.Flow
		waitFor(t, logs, "2 source-side closes to echo-plain", func() bool {
			flows = observeJSON(t, bin, socket, "--last", "1000", "--to-service", "shop/echo-plain")
			n := 0
			for _, f := range flows {
				if f.Event == flow.EventClose && f.Reporter == flow.ReporterSource {
					n++
				}
			}
			return n == 2
		})
		var sent uint64
		for _, f := range flows {
			if f.Event != flow.EventClose {
				continue
			}
			if f.FastPath {
				t.Errorf("close record on the fast path: %+v", f)
			}
			if f.Reporter == flow.ReporterSource {
				sent += f.BytesSent
			}
		}
		if sent != uint64(plain.Sent) {
			t.Errorf("records count %d bytes sent, the client sent %d", sent, plain.Sent)
		}
	})
	t.Run("cross-node flow is not on the fast path", func(t *testing.T) {
		var flows []flow.Flow
		// The close record comes once both ends have closed, and the
		// agent reads flow events in batches (at most 100 ms apart).
		waitFor(t, logs, "the close of client → db", func() bool {
			flows = observeJSON(t, bin, socket, "--last", "1000", "--to-workload", "shop/db", "--verdict", "allowed")
			for _, f := range flows {
				if f.Event == flow.EventClose {
					return true
				}
			}
			return false
		})
		closes := 0
		for _, f := range flows {
			if f.Destination.Workload != "db" || f.Verdict != flow.VerdictAllowed {
				t.Errorf("filter let through %+v", f)
			}
			if f.Event == flow.EventClose {
				closes++
				if f.FastPath || f.BytesSent != uint64(len(probe.Line)) || f.BytesRecv != uint64(len("db\n")) {
					t.Errorf("close record %+v: want %d bytes sent, 3 received, no fast path", f, len(probe.Line))
				}
			}
		}
		if closes != 1 {
			t.Errorf("%d close records of client → db, want 1", closes)
		}
	})
	t.Run("denies carry the policy", func(t *testing.T) {
		flows := observeJSON(t, bin, socket, "--last", "1000", "--verdict", "denied")
		if len(flows) == 0 {
			t.Fatal("no deny records")
		}
		for _, f := range flows {
			if f.Event != flow.EventDeny || f.Source.Workload != "batch" || !strings.HasPrefix(f.Policy, "only-frontend#") ||
				f.Service == nil || f.Service.Name != "shop/db" || f.Reporter != flow.ReporterSource {
				t.Errorf("deny record %+v", f)
			}
		}
	})
	t.Run("status", func(t *testing.T) {
		out, err := exec.Command(bin, "status", "--socket", socket, "-o", "json").Output()
		if err != nil {
			t.Fatal(err)
		}
		var st observe.Status
		if err := json.Unmarshal(out, &st); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		if st.Node != "a" || !st.XDS.Connected || st.Workloads != 3 || st.Services != 3 || st.FastPath.Registered < 8 ||
			st.Flows.Total == 0 || st.Flows.LostKernel != 0 {
			t.Errorf("status %+v", st)
		}
	})
	t.Run("metrics", func(t *testing.T) {
		code, body := get("/metrics")
		if code != http.StatusOK {
			t.Fatalf("/metrics: %d", code)
		}
		want := []string{
			`sluice_tcp_connections_denied_total{`,
			`source_workload="batch"`,
			`destination_service="shop/echo"`,
			`sluice_fastpath_sockets_registered_total`,
		}
		for _, w := range want {
			if !strings.Contains(body, w) {
				t.Errorf("/metrics lacks %s", w)
			}
		}
		var sent float64
		for _, line := range strings.Split(body, "\n") {
			if strings.HasPrefix(line, "sluice_tcp_sent_bytes_total{") && strings.Contains(line, `destination_service="shop/echo"`) &&
				strings.Contains(line, `reporter="source"`) {
				var v float64
				fmt.Sscan(line[strings.LastIndex(line, " ")+1:], &v)
				sent += v
			}
		}
		if sent != float64(ex.Sent) {
			t.Errorf("sluice_tcp_sent_bytes_total to echo (source) = %v, want %d", sent, ex.Sent)
		}
	})
}
