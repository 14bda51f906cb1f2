package observe_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mesh/sluice/sockops/flow"
	"github.com/sluice-mesh/sluice/sockops/observe"
)

// serve runs a Server of store on a unix socket in a temporary directory
// until the test ends, and returns the socket's path.
func serve(t *testing.T, store *flow.Store, status func() observe.Status) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "run", "agent.sock")
	l, err := observe.Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	if status == nil {
		status = func() observe.Status { return observe.Status{} }
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- observe.NewServer(store, status, nil).Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return path
}

func dial(t *testing.T, path string) *observe.Client {
	t.Helper()
	c, err := observe.Dial(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// rawGet sends GET target to the socket with a plain HTTP client.
func rawGet(t *testing.T, path, target string) (*http.Response, string) {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", path)
	}}}
	resp, err := hc.Get("http://agent" + target)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(body)
}

// gen returns the i-th flow of the test traffic: from workload w<i%3> in
// shop; every fifth to data/db:5432 directly and denied, the others to
// service cart (VIP port 80) answered by shop/cart-<i%2>:8080, allowed.
// Of those, every seventh is a request: GET answered 200 when i is even,
// POST answered 503 when it is odd.
func gen(i int, at time.Time) flow.Flow {
	f := flow.Flow{
		Time: at, Node: "node-a", Event: flow.EventOpen, Reporter: flow.ReporterSource, Protocol: "tcp",
		Source: flow.Peer{Workload: fmt.Sprintf("w%d", i%3), Namespace: "shop",
			Identity: fmt.Sprintf("spiffe://td/ns/shop/sa/w%d", i%3), Address: netip.MustParseAddrPort("10.244.0.9:40000")},
	}
	if i%5 == 0 {
		f.Verdict, f.Reason, f.Policy = flow.VerdictDenied, "policy", "data/db-ingress#0"
		f.Destination = flow.Peer{Workload: "db", Namespace: "data", Address: netip.MustParseAddrPort("10.244.2.2:5432")}
		return f
	}
	f.Verdict = flow.VerdictAllowed
	f.Service = &flow.Service{Name: "cart", VIP: netip.MustParseAddrPort("10.96.0.10:80")}
	f.Destination = flow.Peer{Workload: fmt.Sprintf("cart-%d", i%2), Namespace: "shop", Address: netip.MustParseAddrPort("10.244.1.5:8080")}
	if i%7 == 0 {
		f.Event, f.Reporter, f.Protocol = flow.EventRequest, flow.ReporterProxy, "http"
		f.HTTP = &flow.HTTP{Method: "GET", Path: "/items", Protocol: "HTTP/1.1", Code: 200}
		if i%2 == 1 {
			f.HTTP.Method, f.HTTP.Code = "POST", 503
		}
	}
	return f
}

// isRequest says whether gen's i-th flow is a request.
func isRequest(i int) bool { return i%7 == 0 && i%5 != 0 }

func collect(ctx context.Context, c *observe.Client, q observe.Query) ([]uint64, error) {
	got := []uint64{}
	err := c.Flows(ctx, q, func(f flow.Flow) error { got = append(got, f.Seq); return nil }, nil)
	return got, err
}

// seqsWhere lists 1..n that keep selects, the last at most max of them.
func seqsWhere(n, max int, keep func(i int) bool) []uint64 {
	out := []uint64{}
	for i := 1; i <= n; i++ {
		if keep(i) {
			out = append(out, uint64(i))
		}
	}
	if len(out) > max {
		out = out[len(out)-max:]
	}
	return out
}

func TestServerFlowsQueries(t *testing.T) {
	const n = 150
	store := flow.NewStore(1000)
	now := time.Now()
	// Flow i happened (150-i)s + 0.5s ago, so "since=5s" takes 146..150
	// however long the test takes to ask, within half a second.
	at := func(i int) time.Time { return now.Add(time.Duration(i-n)*time.Second - 500*time.Millisecond) }
	for i := 1; i <= n; i++ {
		store.Add(gen(i, at(i)))
	}
	path := serve(t, store, nil)
	c := dial(t, path)
	all := func(int) bool { return true }
	rfc := func(i int) string { return at(i).Format(time.RFC3339Nano) }
	type params = url.Values
	tests := []struct {
		name   string
		params params        // the query as GET parameters
		q      observe.Query // the same query for the client
		want   []uint64
	}{
		{"default is the last 100", params{}, observe.Query{}, seqsWhere(n, 100, all)},
		{"last", params{"last": {"3"}}, observe.Query{Last: 3}, []uint64{148, 149, 150}},
		{"last more than stored", params{"last": {"500"}}, observe.Query{Last: 500}, seqsWhere(n, n, all)},
		{"since a time", params{"since": {rfc(140)}}, observe.Query{Since: at(140)}, seqsWhere(n, n, func(i int) bool { return i >= 140 })},
		{"since a duration ago", params{"since": {"5s"}}, observe.Query{Since: time.Now().Add(-5 * time.Second)}, []uint64{146, 147, 148, 149, 150}},
		{"last and since", params{"last": {"5"}, "since": {rfc(148)}}, observe.Query{Last: 5, Since: at(148)}, []uint64{148, 149, 150}},
		{"from workload", params{"from_workload": {"w1"}}, observe.Query{Filter: flow.Filter{FromWorkload: "w1"}},
			seqsWhere(n, 100, func(i int) bool { return i%3 == 1 })},
		{"from workload qualified", params{"from_workload": {"shop/w1"}, "last": {"2"}},
			observe.Query{Last: 2, Filter: flow.Filter{FromWorkload: "shop/w1"}}, []uint64{145, 148}},
		{"from workload in another namespace", params{"from_workload": {"data/w1"}},
			observe.Query{Filter: flow.Filter{FromWorkload: "data/w1"}}, []uint64{}},
		{"to workload", params{"to_workload": {"db"}}, observe.Query{Filter: flow.Filter{ToWorkload: "db"}},
			seqsWhere(n, 100, func(i int) bool { return i%5 == 0 })},
		{"to workload qualified", params{"to_workload": {"shop/cart-1"}, "last": {"3"}},
			observe.Query{Last: 3, Filter: flow.Filter{ToWorkload: "shop/cart-1"}}, []uint64{143, 147, 149}},
		{"namespace of the destination", params{"namespace": {"data"}}, observe.Query{Filter: flow.Filter{Namespace: "data"}},
			seqsWhere(n, 100, func(i int) bool { return i%5 == 0 })},
		{"to service", params{"to_service": {"cart"}, "last": {"4"}},
			observe.Query{Last: 4, Filter: flow.Filter{ToService: "cart"}}, []uint64{146, 147, 148, 149}},
		{"from identity", params{"from_identity": {"spiffe://td/ns/shop/sa/w2"}, "last": {"2"}},
			observe.Query{Last: 2, Filter: flow.Filter{FromIdentity: "spiffe://td/ns/shop/sa/w2"}}, []uint64{146, 149}},
		{"from identity prefix", params{"from_identity": {"spiffe://td/ns/shop/*"}, "last": {"2"}},
			observe.Query{Last: 2, Filter: flow.Filter{FromIdentity: "spiffe://td/ns/shop/*"}}, []uint64{149, 150}},
		{"from identity prefix of nobody", params{"from_identity": {"spiffe://td/ns/data/*"}},
			observe.Query{Filter: flow.Filter{FromIdentity: "spiffe://td/ns/data/*"}}, []uint64{}},
		{"verdict", params{"verdict": {"denied"}}, observe.Query{Filter: flow.Filter{Verdict: flow.VerdictDenied}},
			seqsWhere(n, 100, func(i int) bool { return i%5 == 0 })},
		{"service port", params{"port": {"80"}, "last": {"2"}}, observe.Query{Last: 2, Filter: flow.Filter{Port: 80}}, []uint64{148, 149}},
		{"backend port", params{"port": {"5432"}, "last": {"2"}}, observe.Query{Last: 2, Filter: flow.Filter{Port: 5432}}, []uint64{145, 150}},
		{"combined", params{"last": {"2"}, "verdict": {"denied"}, "from_workload": {"w0"}},
			observe.Query{Last: 2, Filter: flow.Filter{Verdict: flow.VerdictDenied, FromWorkload: "w0"}}, []uint64{135, 150}},
		{"requests", params{"event": {"request"}}, observe.Query{Filter: flow.Filter{Event: flow.EventRequest}},
			seqsWhere(n, 100, isRequest)},
		{"connection opens", params{"event": {"open"}, "last": {"3"}}, observe.Query{Last: 3, Filter: flow.Filter{Event: flow.EventOpen}},
			seqsWhere(n, 3, func(i int) bool { return !isRequest(i) })},
		{"request method", params{"http_method": {"GET"}}, observe.Query{Filter: flow.Filter{HTTPMethod: "GET"}},
			seqsWhere(n, 100, func(i int) bool { return isRequest(i) && i%2 == 0 })},
		{"request code class", params{"http_code": {"5xx"}, "last": {"2"}}, observe.Query{Last: 2, Filter: flow.Filter{HTTPCode: "5xx"}},
			[]uint64{133, 147}},
		{"request code", params{"http_code": {"200"}, "http_method": {"post"}}, observe.Query{Filter: flow.Filter{HTTPCode: "200", HTTPMethod: "post"}},
			[]uint64{}},
	}
	for _, tt := range tests {
		got, err := collect(context.Background(), c, tt.q)
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		if !slices.Equal(got, tt.want) {
			t.Errorf("%s (client): got seqs %v, want %v", tt.name, got, tt.want)
		}
		resp, body := rawGet(t, path, "/v1/flows?"+tt.params.Encode())
		if ct := resp.Header.Get("Content-Type"); resp.StatusCode != http.StatusOK || ct != "application/x-ndjson" {
			t.Fatalf("%s (raw): status %d, Content-Type %q; want 200, application/x-ndjson; body %q", tt.name, resp.StatusCode, ct, body)
		}
		got = []uint64{}
		for line := range strings.Lines(body) {
			var f flow.Flow
			if err := json.Unmarshal([]byte(line), &f); err != nil {
				t.Fatalf("%s (raw): line %q: %v", tt.name, line, err)
			}
			got = append(got, f.Seq)
		}
		if !slices.Equal(got, tt.want) {
			t.Errorf("%s (raw %s): got seqs %v, want %v", tt.name, tt.params.Encode(), got, tt.want)
		}
	}
}

// follow runs a --follow query in the background and hands over what it
// receives: flows on the first channel, lost counts on the second, and
// Flows's result on the third.
func follow(ctx context.Context, c *observe.Client, q observe.Query) (<-chan flow.Flow, <-chan uint64, <-chan error) {
	flows, lost, done := make(chan flow.Flow), make(chan uint64, 100), make(chan error, 1)
	q.Follow = true
	go func() {
		done <- c.Flows(ctx, q, func(f flow.Flow) error {
			select {
			case flows <- f:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		}, func(n uint64) { lost <- n })
	}()
	return flows, lost, done
}

func receive(t *testing.T, flows <-chan flow.Flow, n int) []uint64 {
	t.Helper()
	got := []uint64{}
	for range n {
		select {
		case f := <-flows:
			got = append(got, f.Seq)
		case <-time.After(10 * time.Second):
			t.Fatalf("after %v: no flow within 10s", got)
		}
	}
	return got
}

// --follow gives the backlog, then exactly the new flows the filter
// selects, once each and in order.
func TestServerFollow(t *testing.T) {
	store := flow.NewStore(100)
	now := time.Now()
	for i := 1; i <= 10; i++ {
		store.Add(gen(i, now))
	}
	c := dial(t, serve(t, store, nil))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// w1 is i%3 == 1: 1, 4, 7, 10 stored.
	flows, lost, done := follow(ctx, c, observe.Query{Last: 2, Filter: flow.Filter{FromWorkload: "w1"}})
	if got := receive(t, flows, 2); !slices.Equal(got, []uint64{7, 10}) {
		t.Fatalf("backlog: got seqs %v, want [7 10]", got)
	}
	// The subscription is in place once the backlog arrives.
	for i := 11; i <= 22; i++ {
		store.Add(gen(i, now))
	}
	// w1 among 11..22: 13, 16, 19, 22. Had a flow of another workload
	// leaked through, it would come before 22.
	if got := receive(t, flows, 4); !slices.Equal(got, []uint64{13, 16, 19, 22}) {
		t.Fatalf("live: got seqs %v, want [13 16 19 22]", got)
	}
	select {
	case n := <-lost:
		t.Errorf("lost %d flows while keeping up", n)
	default:
	}
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Flows after cancel = %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Flows did not return after its context ended")
	}
	// The server notices the client left and drops its subscription:
	// later flows are not counted as lost to it.
	deadline := time.Now().Add(10 * time.Second)
	for {
		before := store.Stats().LostSubscribers
		for i := range 2000 {
			store.Add(gen(i, now))
		}
		if store.Stats().LostSubscribers == before {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the subscription of a client that left still receives flows")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// --follow without last or since gives only new flows.
func TestServerFollowNoBacklog(t *testing.T) {
	store := flow.NewStore(100)
	for i := 1; i <= 5; i++ {
		store.Add(gen(i, time.Now()))
	}
	c := dial(t, serve(t, store, nil))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	flows, _, _ := follow(ctx, c, observe.Query{})
	// The subscription may not exist yet: add until a flow arrives.
	var first uint64
	for first == 0 {
		f := store.Add(gen(6, time.Now()))
		select {
		case got := <-flows:
			first = got.Seq
			if got.Seq > f.Seq || got.Seq <= 5 {
				t.Fatalf("first flow has seq %d, want one added after the query (6..%d)", got.Seq, f.Seq)
			}
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// A follower that reads too slowly is told how many flows it missed,
// before the flows that come after them.
func TestServerFollowLostFlows(t *testing.T) {
	const burst = 20000
	store := flow.NewStore(100)
	store.Add(gen(1, time.Now()))
	c := dial(t, serve(t, store, nil))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	started, unblock := make(chan struct{}), make(chan struct{})
	var got []uint64
	var lostAt []uint64 // lostAt[k]: flows reported lost before got[k]
	var lost uint64
	errDone := errors.New("done")
	done := make(chan error, 1)
	go func() {
		done <- c.Flows(ctx, observe.Query{Last: 1, Follow: true}, func(f flow.Flow) error {
			if f.Seq == 1 { // the backlog: the subscription exists
				close(started)
				<-unblock
				return nil
			}
			got, lostAt = append(got, f.Seq), append(lostAt, lost)
			if f.Node == "end" {
				return errDone
			}
			return nil
		}, func(n uint64) {
			if n == 0 {
				t.Error("lost_flows line with 0")
			}
			lost += n
		})
	}()
	<-started
	for i := range burst {
		store.Add(gen(i, time.Now()))
	}
	close(unblock)
	// Mark the end with flows added until one gets through.
	end := gen(0, time.Now())
	end.Node = "end"
	for finished := false; !finished; {
		store.Add(end)
		select {
		case err := <-done:
			if !errors.Is(err, errDone) {
				t.Fatalf("Flows = %v", err)
			}
			finished = true
		case <-time.After(20 * time.Millisecond):
		}
	}
	if lost == 0 {
		t.Fatalf("no flows reported lost after a burst of %d to a blocked follower", burst)
	}
	// Every flow missed before a flow that arrived was reported before it.
	for k, seq := range got {
		if missed := seq - 2 - uint64(k); lostAt[k] < missed { // of seqs 2..seq-1, k were received
			t.Fatalf("flow %d arrived after %d were missed, but only %d were reported lost", seq, missed, lostAt[k])
		}
	}
	// And no more were reported than were missed.
	stats := store.Stats()
	if max := stats.Total - 1 - uint64(len(got)); lost > max {
		t.Errorf("reported %d lost, but only %d flows after the backlog were not received", lost, max)
	}
	if stats.LostSubscribers < lost {
		t.Errorf("Stats().LostSubscribers = %d, less than the %d reported", stats.LostSubscribers, lost)
	}
}

func TestServerBadParams(t *testing.T) {
	path := serve(t, flow.NewStore(10), nil)
	tests := []struct {
		query string
		want  []string // in the message
	}{
		{"last=abc", []string{"last", `"abc"`}},
		{"last=-1", []string{"last", `"-1"`}},
		{"since=yesterday", []string{"since", `"yesterday"`, "RFC 3339", "duration"}},
		{"since=-5m", []string{"since", `"-5m"`, "positive"}},
		{"follow=maybe", []string{"follow", `"maybe"`}},
		{"port=0", []string{"port", `"0"`, "65535"}},
		{"port=70000", []string{"port", `"70000"`}},
		{"port=http", []string{"port", `"http"`}},
		{"verdict=drop", []string{"verdict", `"drop"`, "allowed, denied or audit"}},
		{"from_workload=a/b/c", []string{"from_workload", `"a/b/c"`, "namespace/name"}},
		{"to_workload=/web", []string{"to_workload", `"/web"`}},
		{"from_identity=web", []string{"from_identity", `"web"`, "spiffe://"}},
		{"from_identity=spiffe://td/*/web", []string{"from_identity", "*"}},
		{"event=requests", []string{"event", `"requests"`, "request"}},
		{"http_code=5XX", []string{"http_code", `"5XX"`, "5xx"}},
		{"http_method=GET+POST", []string{"http_method", `"GET POST"`}},
		{"limit=5", []string{`"limit"`, "last"}},
	}
	for _, tt := range tests {
		resp, body := rawGet(t, path, "/v1/flows?"+tt.query)
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("%s: status %d, want 400", tt.query, resp.StatusCode)
		}
		for _, w := range tt.want {
			if !strings.Contains(body, w) {
				t.Errorf("%s: message %q does not contain %q", tt.query, body, w)
			}
		}
	}
	// The client passes the message on.
	_, err := collect(context.Background(), dial(t, path), observe.Query{Last: -1})
	if err == nil || !strings.Contains(err.Error(), `last="-1"`) {
		t.Errorf("client with last -1: error %v, want the agent's message naming last", err)
	}
	if resp, _ := rawGet(t, path, "/v1/nothing"); resp.StatusCode != http.StatusNotFound {
		t.Errorf("unknown path: status %d, want 404", resp.StatusCode)
	}
}

func TestServerStatus(t *testing.T) {
	started := time.Date(2026, 3, 1, 11, 0, 0, 0, time.UTC)
	fromAgent := observe.Status{
		Node: "node-a", Version: "v1.2.3", Started: started,
		XDS: observe.XDS{Server: "unix:///x.sock", Mode: "delta", Connected: true, Since: started,
			Applied:  map[string]string{"type.googleapis.com/envoy.config.cluster.v3.Cluster": "7"},
			LastNACK: &observe.NACK{TypeURL: "t", Version: "6", Error: "bad", Time: started},
			NACKs:    observe.NACKs{Capacity: 2, Invalid: 3}, Reconnects: 4, LastError: "stream reset"},
		Workloads: 3, Services: 4, Backends: 5, Policies: 6,
		Maps:      []observe.MapFill{{Name: "sl_services", Entries: 4, Capacity: 1024}},
		Dataplane: observe.Dataplane{EntriesWritten: 77},
		Flows:     observe.Flows{Stored: 999, Capacity: 999, Total: 999, LostKernel: 42, LostSubscribers: 999},
		FastPath:  observe.FastPath{Default: "on", Registered: 10, Active: 2, Redirected: 12345, Fallbacks: 1},
	}
	store := flow.NewStore(8)
	for i := range 10 {
		store.Add(gen(i, time.Now()))
	}
	sub := store.Subscribe(flow.Filter{}, 1)
	store.Add(gen(1, time.Now()))
	store.Add(gen(2, time.Now())) // lost
	sub.Close()
	path := serve(t, store, func() observe.Status { return fromAgent })
	got, err := dial(t, path).Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := fromAgent
	// The server counts flows from the store; the kernel's losses are the agent's.
	want.Flows = observe.Flows{Stored: 8, Capacity: 8, Total: 12, LostKernel: 42, LostSubscribers: 1}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Status() =\n%+v\nwant\n%+v", got, want)
	}
	resp, body := rawGet(t, path, "/v1/status")
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" || !strings.HasPrefix(body, `{"node":"node-a"`) {
		t.Errorf("raw status: Content-Type %q, body %s", ct, body)
	}
	// The JSON names are what scripts read: they never change.
	for _, want := range []string{`"nacks":{"capacity":2,"invalid":3}`, `"reconnects":4`, `"last_error":"stream reset"`,
		`"dataplane":{"entries_written":77}`} {
		if !strings.Contains(body, want) {
			t.Errorf("raw status lacks %s: %s", want, body)
		}
	}
}

// Serve returns once its context ends, ending a follower's stream.
func TestServerStopsFollowers(t *testing.T) {
	store := flow.NewStore(10)
	store.Add(gen(1, time.Now()))
	path := filepath.Join(t.TempDir(), "agent.sock")
	l, err := observe.Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() {
		served <- observe.NewServer(store, func() observe.Status { return observe.Status{} }, nil).Serve(ctx, l)
	}()
	c := dial(t, path)
	flows, _, done := follow(context.Background(), c, observe.Query{Last: 1})
	receive(t, flows, 1)
	cancel()
	for name, ch := range map[string]<-chan error{"Serve": served, "Flows": done} {
		select {
		case err := <-ch:
			if err != nil {
				t.Errorf("%s = %v, want nil", name, err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s did not return after the server's context ended", name)
		}
	}
	if _, err := observe.Dial(path); !errors.Is(err, observe.ErrNotRunning) {
		t.Errorf("Dial after Serve returned: %v, want ErrNotRunning", err)
	}
}

// TestServerProfiles: the local API serves the agent's Go profiles.
func TestServerProfiles(t *testing.T) {
	path := serve(t, flow.NewStore(8), nil)
	resp, body := rawGet(t, path, "/debug/pprof/heap")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /debug/pprof/heap: %s: %s", resp.Status, body)
	}
	// A heap profile is a gzip-compressed protocol buffer.
	if len(body) < 2 || body[0] != 0x1f || body[1] != 0x8b {
		t.Fatalf("GET /debug/pprof/heap: %d bytes, not gzip", len(body))
	}
	// The client fetches them; an unknown one is refused by name.
	heap, err := dial(t, path).Profile(context.Background(), "heap")
	if err != nil || len(heap) < 2 || heap[0] != 0x1f || heap[1] != 0x8b {
		t.Errorf("Profile(heap): %d bytes, %v", len(heap), err)
	}
	if _, err := dial(t, path).Profile(context.Background(), "nosuch"); err == nil || !strings.Contains(err.Error(), "/debug/pprof/nosuch") {
		t.Errorf("Profile(nosuch): %v, want a refusal naming it", err)
	}
	resp, body = rawGet(t, path, "/debug/pprof/goroutine?debug=1")
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, "goroutine profile:") {
		t.Fatalf("GET /debug/pprof/goroutine: %s: %.200s", resp.Status, body)
	}
}
