package l7_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-mesh/sluice/dataplane/l7"
)

// fullRecord is a request record with every field set.
func fullRecord() l7.RequestRecord {
	return l7.RequestRecord{
		Origin:   l7.Origin{Service: netip.MustParseAddrPort("10.96.0.10:80"), Client: netip.MustParseAddrPort("10.244.1.4:43210"), Identity: 7},
		ClientID: "spiffe://td/ns/shop/sa/web", Service: "shop/cart:80", Route: "items", Cluster: "cart-v2",
		Upstream: netip.MustParseAddrPort("10.244.2.5:8080"), Method: "POST", Authority: "cart.shop", Path: "/items/42",
		Proto: "HTTP/2.0", GRPC: true, GRPCStatus: "7", Code: 403, Tries: 2,
		Start:    time.Date(2026, 3, 1, 12, 0, 0, 123456789, time.UTC),
		Duration: 1234567 * time.Nanosecond,
		Denied:   &l7.Verdict{Policy: "shop/cart-http", Rule: "admins"},
		Err:      "denied",
	}
}

func encode(t *testing.T, ws ...l7.WireRecord) string {
	t.Helper()
	var b bytes.Buffer
	for _, w := range ws {
		line, err := json.Marshal(w)
		if err != nil {
			t.Fatal(err)
		}
		b.Write(append(line, '\n'))
	}
	return b.String()
}

// A record survives the wire: what the proxy writes, the agent reads,
// field for field.
func TestWireRecordRoundTrip(t *testing.T) {
	r := fullRecord()
	w := l7.NewWireRecord(r)
	want := l7.WireRecord{
		V: l7.WireVersion, Service: r.Origin.Service, Client: r.Origin.Client, Identity: 7, ClientID: r.ClientID,
		ServiceName: "shop/cart:80", Route: "items", Cluster: "cart-v2", Upstream: r.Upstream, Method: "POST",
		Path: "/items/42", Authority: "cart.shop", Proto: "HTTP/2.0", GRPC: true, GRPCStatus: "7", Code: 403, Tries: 2,
		Start: r.Start, Duration: r.Duration, Denied: &l7.WireVerdict{Policy: "shop/cart-http", Rule: "admins"}, Error: "denied",
	}
	if *w.Denied != *want.Denied {
		t.Errorf("denied %+v, want %+v", *w.Denied, *want.Denied)
	}
	w.Denied, want.Denied = nil, nil
	if w != want {
		t.Errorf("wire record\n%+v, want\n%+v", w, want)
	}

	w = l7.NewWireRecord(r)
	got, err := l7.ReadRecords(strings.NewReader(encode(t, w)))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || *got[0].Denied != *w.Denied || !got[0].Start.Equal(w.Start) {
		t.Fatalf("read back %+v, want %+v", got, w)
	}
	got[0].Denied, w.Denied, got[0].Start = nil, nil, w.Start
	if got[0] != w {
		t.Errorf("read back\n%+v, want\n%+v", got[0], w)
	}

	// The names on the wire are the format's, whatever RequestRecord's
	// Go fields are called.
	var m map[string]any
	if err := json.Unmarshal([]byte(encode(t, l7.NewWireRecord(r))), &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"v", "service", "client", "identity", "client_id", "service_name", "route", "cluster", "upstream",
		"method", "path", "authority", "proto", "grpc", "grpc_status", "code", "tries", "start", "duration_ns", "denied", "error"} {
		if _, ok := m[k]; !ok {
			t.Errorf("wire record lacks %q: %v", k, m)
		}
	}
	if len(m) != 21 {
		t.Errorf("wire record has %d fields, want 21: %v", len(m), m)
	}
	// A request with no upstream, no identity and no denial leaves them out.
	bare := l7.NewWireRecord(l7.RequestRecord{Method: "GET", Path: "/", Proto: "HTTP/1.1", Code: 404, Start: r.Start})
	if s := encode(t, bare); strings.Contains(s, "upstream") || strings.Contains(s, "denied") || strings.Contains(s, "identity") {
		t.Errorf("bare record %s", s)
	}
}

// A client's path, authority and the error are cut to MaxRecordText
// bytes, at a rune boundary; the cut path says so.
func TestWireRecordBounds(t *testing.T) {
	r := fullRecord()
	r.Path = "/" + strings.Repeat("a", l7.MaxRecordText-2) + "é/rest" // é straddles the bound
	r.Authority = strings.Repeat("h", 1000)
	r.Err = strings.Repeat("e", l7.MaxRecordText)
	w := l7.NewWireRecord(r)
	if w.Path != r.Path[:l7.MaxRecordText-1] || !w.PathTruncated {
		t.Errorf("path %q (truncated %v), want the first %d bytes, cut", w.Path, w.PathTruncated, l7.MaxRecordText-1)
	}
	if len(w.Authority) != l7.MaxRecordText || w.Error != r.Err {
		t.Errorf("authority %d bytes, error %d bytes; want %d and the whole error", len(w.Authority), len(w.Error), l7.MaxRecordText)
	}
	if w := l7.NewWireRecord(fullRecord()); w.PathTruncated {
		t.Error("a short path is marked truncated")
	}

	// The agent cuts too: a record from elsewhere is bounded as well.
	long := l7.NewWireRecord(fullRecord())
	long.Path = "/" + strings.Repeat("b", 1000)
	got, err := l7.ReadRecords(strings.NewReader(encode(t, long)))
	if err != nil {
		t.Fatal(err)
	}
	if len(got[0].Path) != l7.MaxRecordText || !got[0].PathTruncated {
		t.Errorf("agent side: path of %d bytes, truncated %v", len(got[0].Path), got[0].PathTruncated)
	}
}

func TestReadRecordsRefuses(t *testing.T) {
	good := encode(t, l7.NewWireRecord(fullRecord()))
	line := strings.TrimSuffix(good, "\n")
	with := func(old, new string) string { return strings.Replace(line, old, new, 1) }
	tests := []struct {
		name, body string
		want       []string
	}{
		{"not JSON", good + "{\n", []string{"line 2"}},
		{"unknown field", good + with(`"v":1`, `"v":1,"color":"red"`), []string{"line 2", `"color"`}},
		{"other version", with(`"v":1`, `"v":2`), []string{"line 1", "version 2", "version 1"}},
		{"no method", with(`"method":"POST"`, `"method":""`), []string{"line 1", "method"}},
		{"no start", with(`"start":"2026-03-01T12:00:00.123456789Z"`, `"start":"0001-01-01T00:00:00Z"`), []string{"start"}},
		{"bad code", with(`"code":403`, `"code":1000`), []string{"code 1000"}},
		{"bad grpc status", with(`"grpc_status":"7"`, `"grpc_status":"07"`), []string{"line 1", `grpc_status "07"`}},
		{"grpc status too big", with(`"grpc_status":"7"`, `"grpc_status":"1000"`), []string{`grpc_status "1000"`}},
		{"negative duration", with(`"duration_ns":1234567`, `"duration_ns":-1`), []string{"duration_ns -1"}},
		{"negative tries", with(`"tries":2`, `"tries":-1`), []string{"tries -1"}},
		{"bad address", with(`"upstream":"10.244.2.5:8080"`, `"upstream":"10.244.2.5"`), []string{"line 1", "upstream"}},
		{"two values on a line", line + " {}\n", []string{"line 1", "more than one"}},
		{"empty line", good + "\n" + good, []string{"line 2", "empty"}},
		{"a line too long", with(`"route":"items"`, `"route":"`+strings.Repeat("r", 70<<10)+`"`), []string{"line 1", "longer than"}},
		{"too many records", strings.Repeat(good, l7.MaxRecordsPerPost+1), []string{fmt.Sprintf("line %d", l7.MaxRecordsPerPost+1), "more than"}},
	}
	for _, tt := range tests {
		got, err := l7.ReadRecords(strings.NewReader(tt.body))
		if err == nil {
			t.Errorf("%s: read %d records, want an error", tt.name, len(got))
			continue
		}
		if got != nil {
			t.Errorf("%s: %d records returned with the error, want none", tt.name, len(got))
		}
		for _, w := range tt.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q does not say %q", tt.name, err, w)
			}
		}
	}
	// The last line may lack its newline; an empty body is no records.
	if got, err := l7.ReadRecords(strings.NewReader(good + line)); err != nil || len(got) != 2 {
		t.Errorf("without a final newline: %d records, %v", len(got), err)
	}
	if got, err := l7.ReadRecords(strings.NewReader("")); err != nil || len(got) != 0 {
		t.Errorf("empty body: %d records, %v", len(got), err)
	}
}

// agent is a fake agent's records endpoint.
type agent struct {
	mu      sync.Mutex
	batches [][]l7.WireRecord // guarded by mu
	lost    []uint64          // guarded by mu: the lost count of each batch
	refuse  error             // guarded by mu: accept's answer
	posts   atomic.Int64
	srv     *httptest.Server
}

func newAgent(t *testing.T) *agent {
	a := &agent{}
	mux := http.NewServeMux()
	mux.Handle("POST "+l7.RecordsPath, l7.RecordsHandler(func(rs []l7.WireRecord, lost uint64) error {
		a.mu.Lock()
		defer a.mu.Unlock()
		if a.refuse != nil {
			return a.refuse
		}
		a.batches = append(a.batches, rs)
		a.lost = append(a.lost, lost)
		return nil
	}))
	a.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.posts.Add(1)
		mux.ServeHTTP(w, r)
	}))
	t.Cleanup(a.srv.Close)
	return a
}

func (a *agent) sizes() (sizes []int, lost []uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, b := range a.batches {
		sizes = append(sizes, len(b))
	}
	return sizes, append([]uint64(nil), a.lost...)
}

// post sends body to the fake agent's endpoint.
func (a *agent) post(t *testing.T, body string, header ...string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, a.srv.URL+l7.RecordsPath, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-ndjson")
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(msg)
}

// A batch is taken whole or not at all: a bad line anywhere refuses it,
// naming the line, and nothing of it is accepted.
func TestRecordsHandler(t *testing.T) {
	a := newAgent(t)
	good := encode(t, l7.NewWireRecord(fullRecord()))
	if code, msg := a.post(t, good+good, l7.LostRecordsHeader, "3"); code != http.StatusNoContent {
		t.Fatalf("good batch: %d %s", code, msg)
	}
	for _, tt := range []struct {
		name, body string
		header     []string
		code       int
		want       string
	}{
		{"bad third line", good + good + "{\"v\":1,\n" + good, nil, http.StatusBadRequest, "line 3"},
		{"bad lost count", good, []string{l7.LostRecordsHeader, "-1"}, http.StatusBadRequest, l7.LostRecordsHeader},
		{"not NDJSON", good, []string{"Content-Type", "application/json"}, http.StatusUnsupportedMediaType, "application/x-ndjson"},
	} {
		code, msg := a.post(t, tt.body, tt.header...)
		if code != tt.code || !strings.Contains(msg, tt.want) {
			t.Errorf("%s: %d %q, want %d naming %q", tt.name, code, msg, tt.code, tt.want)
		}
	}
	a.mu.Lock()
	a.refuse = errors.New("no state yet")
	a.mu.Unlock()
	if code, msg := a.post(t, good); code != http.StatusServiceUnavailable || !strings.Contains(msg, "no state yet") {
		t.Errorf("refused by accept: %d %q, want 503 with its reason", code, msg)
	}
	if sizes, lost := a.sizes(); len(sizes) != 1 || sizes[0] != 2 || lost[0] != 3 {
		t.Errorf("accepted batches %v (lost %v), want the good one alone: [2] ([3])", sizes, lost)
	}
	if resp, err := http.Get(a.srv.URL + l7.RecordsPath); err != nil || resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("GET: %v %v, want 405", resp, err)
	}
}

// switchable is an agent socket that can go away and come back: the
// sender's client dials whatever address it holds now.
type switchable struct{ addr atomic.Value } // string; "" is away

func (s *switchable) client() *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			addr, _ := s.addr.Load().(string)
			if addr == "" {
				return nil, errors.New("connect: no such socket")
			}
			var d net.Dialer
			return d.DialContext(ctx, "tcp", addr)
		},
		DisableKeepAlives: true,
	}}
}

func (s *switchable) to(a *agent) {
	if a == nil {
		s.addr.Store("")
		return
	}
	s.addr.Store(strings.TrimPrefix(a.srv.URL, "http://"))
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A full batch goes at once; fewer wait for the interval (here, for
// Flush).
func TestRecordSenderBatches(t *testing.T) {
	a := newAgent(t)
	var sw switchable
	sw.to(a)
	s := l7.NewRecordSender(l7.RecordSenderOptions{Client: sw.client(), Batch: 4, Interval: time.Hour})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.Run(ctx) }()
	defer func() { cancel(); <-done }()

	for range 4 {
		s.Record(fullRecord())
	}
	eventually(t, "a full batch", func() bool { sizes, _ := a.sizes(); return len(sizes) == 1 })
	for range 3 {
		s.Record(fullRecord())
	}
	time.Sleep(100 * time.Millisecond)
	if sizes, _ := a.sizes(); len(sizes) != 1 || sizes[0] != 4 {
		t.Fatalf("batches %v, want [4]: three records wait for the interval", sizes)
	}
	if err := s.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if sizes, _ := a.sizes(); len(sizes) != 2 || sizes[1] != 3 {
		t.Errorf("batches %v, want [4 3]", sizes)
	}
	if st := s.Stats(); st.Sent != 7 || st.Waiting != 0 || st.Dropped != 0 {
		t.Errorf("stats %+v, want 7 sent", st)
	}
	a.mu.Lock()
	got := a.batches[0][0]
	a.mu.Unlock()
	if got.Path != "/items/42" || got.Denied == nil || got.Code != 403 {
		t.Errorf("the agent got %+v", got)
	}
}

// While the agent is away, records wait, up to the buffer; the rest are
// dropped and counted, and the count reaches the agent with the next
// batch. Record never blocks and does not allocate.
func TestRecordSenderAgentAway(t *testing.T) {
	var sw switchable
	sw.to(nil)
	s := l7.NewRecordSender(l7.RecordSenderOptions{Client: sw.client(), Buffer: 8, Batch: 5, Interval: 10 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.Run(ctx) }()
	defer func() { cancel(); <-done }()

	rec := fullRecord()
	for range 10 {
		s.Record(rec)
	}
	if st := s.Stats(); st.Waiting != 8 || st.Dropped != 2 {
		t.Fatalf("stats %+v, want 8 waiting and 2 dropped", st)
	}
	if allocs := testing.AllocsPerRun(100, func() { s.Record(rec) }); allocs != 0 {
		t.Errorf("Record allocates %v times when full", allocs)
	}
	if err := s.Flush(context.Background()); err == nil {
		t.Error("Flush with the agent away succeeded")
	}
	dropped := s.Stats().Dropped

	a := newAgent(t)
	sw.to(a)
	eventually(t, "the waiting records to reach the agent", func() bool { return s.Stats().Sent == 8 })
	sizes, lost := a.sizes()
	if fmt.Sprint(sizes) != "[5 3]" || lost[0] != dropped || lost[1] != 0 {
		t.Errorf("batches %v with lost counts %v, want [5 3] with [%d 0]", sizes, lost, dropped)
	}
	if allocs := testing.AllocsPerRun(100, func() { s.Record(rec) }); allocs != 0 {
		t.Errorf("Record allocates %v times", allocs)
	}
}

// Records the agent cannot take yet (503) wait; records it refuses as
// malformed (400) are dropped, counted and reported.
func TestRecordSenderAgentRefuses(t *testing.T) {
	a := newAgent(t)
	var sw switchable
	sw.to(a)
	s := l7.NewRecordSender(l7.RecordSenderOptions{Client: sw.client(), Batch: 10, Interval: time.Hour})

	a.mu.Lock()
	a.refuse = errors.New("no state yet")
	a.mu.Unlock()
	s.Record(fullRecord())
	if err := s.Flush(context.Background()); err == nil || !strings.Contains(err.Error(), "503") {
		t.Errorf("Flush while the agent has no state: %v, want its 503", err)
	}
	if st := s.Stats(); st.Waiting != 1 || st.Refused != 0 {
		t.Errorf("stats %+v, want the record waiting", st)
	}
	a.mu.Lock()
	a.refuse = nil
	a.mu.Unlock()

	bad := fullRecord()
	bad.Method = "" // the agent refuses a record without a method
	s.Record(bad)
	if err := s.Flush(context.Background()); err != nil {
		t.Fatalf("Flush: %v; a refused batch is dropped, not an error", err)
	}
	if st := s.Stats(); st.Refused != 2 || st.Waiting != 0 {
		t.Errorf("stats %+v, want the batch of 2 refused", st)
	}
	s.Record(fullRecord())
	if err := s.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	// The refusal is reported at once, by a batch of no records.
	if sizes, lost := a.sizes(); fmt.Sprint(sizes, lost) != "[0 1] [2 0]" {
		t.Errorf("batches %v, lost %v; want [0 1] reporting the 2 refused first: [2 0]", sizes, lost)
	}
}

// Records from many requests at once are each sent once or dropped and
// reported, never both or neither.
func TestRecordSenderConcurrent(t *testing.T) {
	a := newAgent(t)
	var sw switchable
	sw.to(a)
	s := l7.NewRecordSender(l7.RecordSenderOptions{Client: sw.client(), Buffer: 64, Batch: 16, Interval: time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.Run(ctx) }()

	const goroutines, each = 4, 2000
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			r := fullRecord()
			for i := range each {
				r.Tries = g*each + i
				s.Record(r)
			}
		})
	}
	wg.Wait()
	cancel()
	<-done
	if err := s.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	st := s.Stats()
	if st.Sent+st.Dropped != goroutines*each || st.Waiting != 0 || st.Refused != 0 {
		t.Errorf("stats %+v: want sent + dropped = %d", st, goroutines*each)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	seen := map[int]bool{}
	var lost uint64
	for i, b := range a.batches {
		lost += a.lost[i]
		for _, w := range b {
			if seen[w.Tries] {
				t.Fatalf("record %d sent twice", w.Tries)
			}
			seen[w.Tries] = true
		}
	}
	if uint64(len(seen)) != st.Sent || lost != st.Dropped {
		t.Errorf("the agent got %d records and %d reported lost; the sender says %d sent, %d dropped", len(seen), lost, st.Sent, st.Dropped)
	}
}

type answerWith struct {
	code  int
	posts atomic.Int32
}

func (a *answerWith) RoundTrip(r *http.Request) (*http.Response, error) {
	a.posts.Add(1)
	io.Copy(io.Discard, r.Body)
	return &http.Response{StatusCode: a.code, Status: http.StatusText(a.code), Body: io.NopCloser(strings.NewReader("no")), Request: r}, nil
}

// TestRecordSenderStatuses: only an answer that says the batch is
// malformed drops it; any other refusal keeps the records. A report of
// lost records alone that the agent refuses is not posted again and
// again.
func TestRecordSenderStatuses(t *testing.T) {
	for _, tc := range []struct {
		code    int
		refused bool
	}{{400, true}, {413, true}, {415, true}, {408, false}, {429, false}, {500, false}} {
		a := &answerWith{code: tc.code}
		s := l7.NewRecordSender(l7.RecordSenderOptions{Client: &http.Client{Transport: a}, Buffer: 1, Batch: 1, Interval: time.Hour})
		for range 3 {
			s.Record(fullRecord()) // one waits, two are dropped
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := s.Flush(ctx)
		cancel()
		if err == nil || errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("%d: Flush: %v, want the agent's answer", tc.code, err)
		}
		st := s.Stats()
		if tc.refused && (st.Refused != 1 || st.Waiting != 0) || !tc.refused && (st.Refused != 0 || st.Waiting != 1) {
			t.Errorf("%d: stats %+v, want the record %s", tc.code, st, map[bool]string{true: "refused", false: "kept"}[tc.refused])
		}
		if n := a.posts.Load(); n > 2 {
			t.Errorf("%d: %d posts, want at most 2 (the batch, then the report of what was lost)", tc.code, n)
		}
	}
}
