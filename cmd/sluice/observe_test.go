package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluice-mesh/sluice/sockops/flow"
	"github.com/sluice-mesh/sluice/sockops/observe"
)

func fixedStatus() observe.Status {
	started := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	return observe.Status{
		Node: "node-a", Version: "v0.4.0", Started: started,
		XDS: observe.XDS{
			Server: "cp.mesh:15010", Mode: "delta", Connected: true, Since: started.Add(5 * time.Second),
			Applied: map[string]string{
				"type.googleapis.com/envoy.config.listener.v3.Listener":              "12",
				"type.googleapis.com/envoy.config.cluster.v3.Cluster":                "12",
				"type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment": "40",
			},
			LastNACK: &observe.NACK{TypeURL: "type.googleapis.com/envoy.config.listener.v3.Listener", Version: "11",
				Error: "listener web: unknown filter", Time: started.Add(30 * time.Minute)},
			NACKs: observe.NACKs{Capacity: 1, Invalid: 2}, Reconnects: 3, LastError: "rpc error: code = Unavailable desc = connection refused",
		},
		Dataplane: observe.Dataplane{EntriesWritten: 1234},
		Workloads: 12, Services: 30, Backends: 95, Policies: 7,
		Maps: []observe.MapFill{
			{Name: "sl_services", Entries: 30, Capacity: 1024},
			{Name: "sl_backends", Entries: 950, Capacity: 1000},
			{Name: "sl_unsized", Entries: 3},
		},
		Flows:    observe.Flows{Stored: 2500, Capacity: 10000, Total: 123456, LostKernel: 7, LostSubscribers: 42, LostProxy: 3},
		FastPath: observe.FastPath{Default: "on", Registered: 880, Active: 14, Redirected: 3 << 20, Full: 0, Fallbacks: 2, SpliceExcluded: 1},
	}
}

func TestStatusText(t *testing.T) {
	now := time.Date(2026, 3, 1, 11, 2, 3, 0, time.UTC)
	var b bytes.Buffer
	if err := renderStatus(&b, fixedStatus(), now); err != nil {
		t.Fatal(err)
	}
	want := "" +
		"node        node-a\n" +
		"version     v0.4.0\n" +
		"uptime      1h2m3s, since 2026-03-01 10:00:00 UTC\n" +
		"xds         cp.mesh:15010, delta, connected since 2026-03-01 10:00:05 UTC (1h1m58s)\n" +
		"reconnects  3; last stream ended: rpc error: code = Unavailable desc = connection refused\n" +
		"applied     Cluster 12, ClusterLoadAssignment 40, Listener 12\n" +
		"nacks       1 for capacity, 2 invalid\n" +
		"last nack   Listener version 11, 2026-03-01 10:30:00 UTC (32m3s ago): listener web: unknown filter\n" +
		"workloads   12\n" +
		"services    30\n" +
		"backends    95\n" +
		"policies    7\n" +
		"maps        sl_services  30/1024   2.9%\n" +
		"            sl_backends  950/1000  95.0%\n" +
		"            sl_unsized   3/0       -\n" +
		"map writes  1234 entries since the agent started\n" +
		"flows       2500/10000 stored (25.0%), 123456 recorded; lost: 7 in the kernel, 42 to slow subscribers, 3 in the L7 proxy\n" +
		"fast path   default on; 14 sockets on it, 880 registered, 3.0 MiB carried; left on the normal path: 0 (map full), 2 (peer not ready), 1 (splice)\n"
	if got := b.String(); got != want {
		t.Errorf("status text:\n%s\nwant:\n%s", got, want)
	}
}

func TestStatusTextSparse(t *testing.T) {
	now := time.Date(2026, 3, 1, 11, 0, 0, 0, time.UTC)
	s := observe.Status{Node: "node-b", XDS: observe.XDS{Server: "x:1", Mode: "sotw", Since: now.Add(-90 * time.Second)}}
	var b bytes.Buffer
	if err := renderStatus(&b, s, now); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"uptime      unknown\n",
		"xds         x:1, sotw, disconnected since 2026-03-01 10:58:30 UTC (1m30s)\n",
		"reconnects  0\n",
		"applied     none yet\n",
		"nacks       0 for capacity, 0 invalid\n",
		"maps        none reported\n",
		"map writes  0 entries since the agent started\n",
		"flows       0/0 stored (-),",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("status text lacks %q:\n%s", want, b.String())
		}
	}
	if strings.Contains(b.String(), "last nack") {
		t.Errorf("status text shows a NACK there was none of:\n%s", b.String())
	}
}

// syncBuffer is a bytes.Buffer for a writer and a reader on different
// goroutines. Its first Write waits for release, if set, once started is
// closed: a reader too slow for the agent.
type syncBuffer struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	once    sync.Once
	started chan struct{}
	release chan struct{}
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	if b.release != nil {
		b.once.Do(func() { close(b.started); <-b.release })
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// run runs sluice with args and returns its stdout, stderr and error.
func run(ctx context.Context, stdout, stderr *syncBuffer, args ...string) error {
	root := newRootCommand()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	return root.ExecuteContext(ctx)
}

func TestObserveFlagErrors(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "none.sock")
	tests := []struct {
		args []string
		want []string // in the error
	}{
		{[]string{"observe", "-o", "yaml"}, []string{"-o", `"yaml"`, "table, compact or json"}},
		{[]string{"observe", "--verdict", "drop"}, []string{"--verdict", `"drop"`, "allowed, denied or audit"}},
		{[]string{"observe", "--port", "70000"}, []string{"--port", "70000"}},
		{[]string{"observe", "--port", "-1"}, []string{"--port", "-1"}},
		{[]string{"observe", "--port", "http"}, []string{"--port", "http"}},
		{[]string{"observe", "--since", "yesterday"}, []string{"--since", `"yesterday"`, "RFC 3339"}},
		{[]string{"observe", "--since", "-5m"}, []string{"--since", "positive"}},
		{[]string{"observe", "--last", "-2"}, []string{"--last", "-2"}},
		{[]string{"observe", "--from-workload", "a/b/c"}, []string{"--from-workload", `"a/b/c"`}},
		{[]string{"observe", "--to-workload", "shop/"}, []string{"--to-workload", `"shop/"`}},
		{[]string{"observe", "--from-identity", "web"}, []string{"--from-identity", "spiffe://"}},
		{[]string{"observe", "--event", "requests"}, []string{"--event", `"requests"`, "request"}},
		{[]string{"observe", "--http-code", "5XX"}, []string{"--http-code", `"5XX"`, "5xx"}},
		{[]string{"observe", "--http-method", "GET /"}, []string{"--http-method", `"GET /"`}},
		{[]string{"status", "-o", "yaml"}, []string{"-o", `"yaml"`, "text or json"}},
		// Valid flags reach the socket.
		{[]string{"observe", "-f", "--verdict", "audit", "-o", "table"}, []string{missing, "not running"}},
		{[]string{"observe", "--event", "request", "--http-code", "5xx", "--http-method", "GET"}, []string{missing, "not running"}},
		{[]string{"status"}, []string{missing, "not running"}},
	}
	for _, tt := range tests {
		args := append(slices.Clone(tt.args), "--socket", missing)
		err := run(context.Background(), &syncBuffer{}, &syncBuffer{}, args...)
		if err == nil {
			t.Errorf("%v: no error", tt.args)
			continue
		}
		for _, w := range tt.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%v: error %q does not contain %q", tt.args, err, w)
			}
		}
		if len(tt.want) > 0 && tt.want[0] != missing && strings.Contains(err.Error(), "not running") {
			t.Errorf("%v: dialed the agent before checking the flags: %v", tt.args, err)
		}
	}
}

// observeFlow is flow i of the command tests: every third denied.
func observeFlow(i int) flow.Flow {
	f := flow.Flow{
		Time: time.Now(), Node: "node-a", Event: flow.EventOpen, Reporter: flow.ReporterSource, Verdict: flow.VerdictAllowed,
		Protocol:    "tcp",
		Source:      flow.Peer{Workload: "web", Namespace: "shop", Address: netip.MustParseAddrPort("10.244.0.4:40000")},
		Service:     &flow.Service{Name: "cart", VIP: netip.MustParseAddrPort("10.96.0.10:80")},
		Destination: flow.Peer{Workload: fmt.Sprintf("cart-%d", i), Namespace: "shop", Address: netip.MustParseAddrPort("10.244.1.5:8080")},
	}
	if i%3 == 0 {
		f.Verdict, f.Event, f.Policy = flow.VerdictDenied, flow.EventDeny, "shop/cart#0"
	}
	return f
}

// serveAgent serves store and status on a socket until the test ends.
func serveAgent(t *testing.T, store *flow.Store, status observe.Status) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "agent.sock")
	l, err := observe.Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- observe.NewServer(store, func() observe.Status { return status }, nil).Serve(ctx, l) }()
	t.Cleanup(func() { cancel(); <-done })
	return path
}

func jsonSeqs(t *testing.T, out string) []uint64 {
	t.Helper()
	seqs := []uint64{}
	for line := range strings.Lines(out) {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("output line %q is not JSON: %v", line, err)
		}
		if _, ok := m["lost_flows"]; ok {
			t.Fatalf("lost_flows in the JSON output: %q", line)
		}
		seqs = append(seqs, uint64(m["seq"].(float64)))
	}
	return seqs
}

func TestObserveCommand(t *testing.T) {
	store := flow.NewStore(100)
	for i := 1; i <= 10; i++ {
		store.Add(observeFlow(i))
	}
	path := serveAgent(t, store, fixedStatus())
	tests := []struct {
		args  []string
		lines int
		check func(out string) error
	}{
		{[]string{"-o", "json", "--last", "2", "--verdict", "denied"}, 2, func(out string) error {
			if got := jsonSeqs(t, out); !reflect.DeepEqual(got, []uint64{6, 9}) {
				return fmt.Errorf("seqs %v, want [6 9]", got)
			}
			return nil
		}},
		{[]string{"-o", "json", "--to-workload", "shop/cart-4"}, 1, func(out string) error {
			if got := jsonSeqs(t, out); !reflect.DeepEqual(got, []uint64{4}) {
				return fmt.Errorf("seqs %v, want [4]", got)
			}
			return nil
		}},
		{[]string{"--port", "80", "--last", "3"}, 3, func(out string) error { // compact, the default
			if !regexp.MustCompile(`(?m)^\d\d:\d\d:\d\d\.\d{3} deny  shop/web -> cart \(10\.96\.0\.10:80\) -> shop/cart-9 10\.244\.1\.5:8080 denied policy=shop/cart#0$`).MatchString(out) {
				return fmt.Errorf("no compact line for flow 9")
			}
			return nil
		}},
		{[]string{"-o", "table", "--from-workload", "nobody"}, 1, func(out string) error {
			if !strings.HasPrefix(out, "TIME ") {
				return fmt.Errorf("no table header")
			}
			return nil
		}},
		{[]string{"-o", "table"}, 11, nil},
	}
	for _, tt := range tests {
		var stdout, stderr syncBuffer
		if err := run(context.Background(), &stdout, &stderr, append([]string{"observe", "--socket", path}, tt.args...)...); err != nil {
			t.Fatalf("%v: %v", tt.args, err)
		}
		out := stdout.String()
		if n := strings.Count(out, "\n"); n != tt.lines {
			t.Errorf("%v: %d lines, want %d:\n%s", tt.args, n, tt.lines, out)
		}
		if tt.check != nil {
			if err := tt.check(out); err != nil {
				t.Errorf("%v: %v:\n%s", tt.args, err, out)
			}
		}
		if stderr.String() != "" {
			t.Errorf("%v: stderr %q", tt.args, stderr.String())
		}
	}
}

// --follow prints flows as they come, reports flows lost to a slow reader
// on stderr only, and ends without error when interrupted.
func TestObserveFollow(t *testing.T) {
	store := flow.NewStore(100)
	store.Add(observeFlow(1))
	path := serveAgent(t, store, observe.Status{})
	stdout := &syncBuffer{started: make(chan struct{}), release: make(chan struct{})}
	var stderr syncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, stdout, &stderr, "observe", "--socket", path, "-f", "--last", "1", "-o", "json")
	}()
	select {
	case <-stdout.started: // printing the backlog: the command follows now
	case err := <-done:
		t.Fatalf("observe -f ended: %v", err)
	}
	for i := range 20000 {
		store.Add(observeFlow(i))
	}
	close(stdout.release)
	end := observeFlow(1)
	end.Node = "end"
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(stdout.String(), `"node":"end"`) {
		if time.Now().After(deadline) {
			t.Fatal("the flows added after the slow read never arrived")
		}
		store.Add(end)
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("observe -f after interrupt: %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("observe -f did not end on interrupt")
	}
	seqs := jsonSeqs(t, stdout.String()) // and no lost_flows line among them
	if seqs[0] != 1 {
		t.Errorf("first flow seq %d, want the backlog's 1", seqs[0])
	}
	if !regexp.MustCompile(`^(\d+ flows? lost: [^\n]+\n)+$`).MatchString(stderr.String()) {
		t.Errorf("stderr = %q, want lost-flow notices only", stderr.String())
	}
}

func TestStatusCommand(t *testing.T) {
	store := flow.NewStore(50)
	for i := range 3 {
		store.Add(observeFlow(i))
	}
	path := serveAgent(t, store, fixedStatus())
	var stdout, stderr syncBuffer
	if err := run(context.Background(), &stdout, &stderr, "status", "--socket", path, "-o", "json"); err != nil {
		t.Fatal(err)
	}
	var got observe.Status
	if err := json.Unmarshal([]byte(stdout.String()), &got); err != nil {
		t.Fatalf("status -o json: %v:\n%s", err, stdout.String())
	}
	want := fixedStatus()
	want.Flows = observe.Flows{Stored: 3, Capacity: 50, Total: 3, LostKernel: 7, LostProxy: 3}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("status -o json =\n%+v\nwant\n%+v", got, want)
	}
	var text syncBuffer
	if err := run(context.Background(), &text, &stderr, "status", "--socket", path); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"node        node-a\n", "flows       3/50 stored (6.0%), 3 recorded;", "map writes  1234 entries"} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("status text lacks %q:\n%s", want, text.String())
		}
	}
}
