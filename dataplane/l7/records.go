package l7

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"
)

// The proxy's request records travel to the agent over the agent's local
// API socket, the way the proxy's configuration comes from it (Follow):
// the proxy POSTs them to RecordsPath in batches, one JSON object
// (WireRecord) per line, and the agent makes flow records and metrics of
// them.
const (
	// RecordsPath is where the agent's local API takes request records.
	RecordsPath = "/v1/l7/requests"
	// LostRecordsHeader carries, on a POST to RecordsPath, how many
	// records the proxy dropped since its previous accepted POST: its
	// buffer was full, or the agent refused them.
	LostRecordsHeader = "Sluice-Lost-Records"

	// WireVersion is the version of WireRecord this package writes and
	// the only one it reads.
	WireVersion = 1
	// MaxRecordText is the most bytes of a request's path, authority and
	// error a WireRecord carries: what a client sends does not make the
	// records it leaves large.
	MaxRecordText = 256
	// MaxRecordsPerPost is the most records one POST may carry.
	MaxRecordsPerPost = 4096
	// maxWireLine bounds one line of a POST: MaxRecordText bounds the
	// client's strings; the rest come from the configuration.
	maxWireLine = 64 << 10
	// maxRecordsBody bounds a POST's body.
	maxRecordsBody = 16 << 20
)

// WireRecord is a RequestRecord as the proxy sends it to the agent. It is
// the wire format of POST RecordsPath, kept apart from RequestRecord so
// that the proxy's Go types can change without changing what an agent of
// another version reads. Version 1's fields are fixed: a change is a new
// WireVersion, which agents that do not know it refuse.
type WireRecord struct {
	V        int            `json:"v"`                 // WireVersion
	Service  netip.AddrPort `json:"service,omitzero"`  // the VIP:port the client dialed (Origin.Service)
	Client   netip.AddrPort `json:"client,omitzero"`   // the client's address (Origin.Client)
	Identity uint32         `json:"identity,omitzero"` // the client's numeric identity; 0 unknown
	ClientID string         `json:"client_id,omitzero"`
	// ServiceName is the L7 service's name as the configuration gives it
	// (its listener's: "shop/web:80").
	ServiceName string         `json:"service_name,omitzero"`
	Route       string         `json:"route,omitzero"`
	Cluster     string         `json:"cluster,omitzero"`
	Upstream    netip.AddrPort `json:"upstream,omitzero"` // the endpoint of the last try
	Method      string         `json:"method"`
	// Path is escaped, without the query, cut to MaxRecordText bytes
	// (PathTruncated then); Authority and Error are cut likewise.
	Path          string        `json:"path"`
	PathTruncated bool          `json:"path_truncated,omitzero"`
	Authority     string        `json:"authority,omitzero"`
	Proto         string        `json:"proto"` // HTTP/1.1, HTTP/2.0
	GRPC          bool          `json:"grpc,omitzero"`
	GRPCStatus    string        `json:"grpc_status,omitzero"` // the grpc-status the client got: a number from 0 to 999
	Code          int           `json:"code"`
	Tries         int           `json:"tries,omitzero"`
	Start         time.Time     `json:"start"`
	Duration      time.Duration `json:"duration_ns"`
	Denied        *WireVerdict  `json:"denied,omitzero"` // set when authorization denied the request
	Audit         *WireVerdict  `json:"audit,omitzero"`  // set when the dry-run rules would have denied an allowed request
	Error         string        `json:"error,omitzero"`
}

// WireVerdict is the verdict that denied a request, or would have (Audit):
// the policy and its rule ("" when the rule set's default decided).
type WireVerdict struct {
	Policy string `json:"policy,omitzero"`
	Rule   string `json:"rule,omitzero"`
}

// NewWireRecord returns r's wire form, its client's strings cut to
// MaxRecordText bytes.
func NewWireRecord(r RequestRecord) WireRecord {
	w := WireRecord{
		V:       WireVersion,
		Service: r.Origin.Service, Client: r.Origin.Client, Identity: r.Origin.Identity,
		ClientID: r.ClientID, ServiceName: r.Service, Route: r.Route, Cluster: r.Cluster,
		Upstream: r.Upstream, Method: r.Method, Path: r.Path, Authority: r.Authority, Proto: r.Proto,
		GRPC: r.GRPC, GRPCStatus: r.GRPCStatus, Code: r.Code, Tries: r.Tries, Start: r.Start, Duration: r.Duration, Error: r.Err,
	}
	if r.Denied != nil {
		w.Denied = &WireVerdict{Policy: r.Denied.Policy, Rule: r.Denied.Rule}
	}
	if r.Audit != nil {
		w.Audit = &WireVerdict{Policy: r.Audit.Policy, Rule: r.Audit.Rule}
	}
	w.bound()
	return w
}

// bound cuts the strings a client chooses to MaxRecordText bytes.
func (w *WireRecord) bound() {
	var cut bool
	w.Path, cut = cutText(w.Path)
	w.PathTruncated = w.PathTruncated || cut
	w.Authority, _ = cutText(w.Authority)
	w.Error, _ = cutText(w.Error)
}

// cutText cuts s to at most MaxRecordText bytes, at a rune boundary.
func cutText(s string) (string, bool) {
	if len(s) <= MaxRecordText {
		return s, false
	}
	i := MaxRecordText
	for i > 0 && !utf8.RuneStart(s[i]) {
		i--
	}
	return s[:i], true
}

// check says what is wrong with w, if anything.
func (w *WireRecord) check() error {
	switch {
	case w.V != WireVersion:
		return fmt.Errorf("version %d: this agent reads version %d (run a proxy of the agent's version)", w.V, WireVersion)
	case w.Method == "":
		return errors.New("no method")
	case w.Start.IsZero():
		return errors.New("no start time")
	case w.Code < 0 || w.Code > 999:
		return fmt.Errorf("code %d: want 0 to 999", w.Code)
	case w.GRPCStatus != "" && canonicalGRPCStatus(w.GRPCStatus) != w.GRPCStatus:
		return fmt.Errorf("grpc_status %q: want a number from 0 to 999, without leading zeros", w.GRPCStatus)
	case w.Tries < 0:
		return fmt.Errorf("tries %d: want 0 or more", w.Tries)
	case w.Duration < 0:
		return fmt.Errorf("duration_ns %d: want 0 or more", w.Duration)
	}
	return nil
}

// ReadRecords decodes a POST body of request records: one WireRecord of
// WireVersion per line, with no field it does not know and nothing else
// on the line. It returns every record or, if any line is bad, none and
// an error naming the line and what is wrong with it. Path, authority and
// error are cut to MaxRecordText bytes, as NewWireRecord cuts them.
func ReadRecords(r io.Reader) ([]WireRecord, error) {
	var out []WireRecord
	rd := bufio.NewReaderSize(r, 64<<10)
	for n := 1; ; n++ {
		line, err := readLine(rd)
		if errors.Is(err, io.EOF) && len(line) == 0 {
			return out, nil
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		if len(bytes.TrimSpace(line)) == 0 {
			return nil, fmt.Errorf("line %d: empty: want one request record per line", n)
		}
		if len(out) == MaxRecordsPerPost {
			return nil, fmt.Errorf("line %d: more than %d records: send fewer per request", n, MaxRecordsPerPost)
		}
		dec := json.NewDecoder(bytes.NewReader(line))
		dec.DisallowUnknownFields()
		var w WireRecord
		if derr := dec.Decode(&w); derr != nil {
			return nil, fmt.Errorf("line %d: %w", n, fieldError(line, derr))
		}
		if dec.More() {
			return nil, fmt.Errorf("line %d: more than one JSON value", n)
		}
		if cerr := w.check(); cerr != nil {
			return nil, fmt.Errorf("line %d: %w", n, cerr)
		}
		w.bound()
		out = append(out, w)
		if errors.Is(err, io.EOF) {
			return out, nil
		}
	}
}

// fieldError names the address field err is about: encoding/json passes
// on netip's "not an ip:port" without saying which field it was.
func fieldError(line []byte, err error) error {
	var fields map[string]json.RawMessage
	if json.Unmarshal(line, &fields) != nil {
		return err
	}
	for _, name := range []string{"service", "client", "upstream"} {
		var ap netip.AddrPort
		if raw, ok := fields[name]; ok && json.Unmarshal(raw, &ap) != nil {
			return fmt.Errorf("%s %s: want \"ip:port\": %w", name, raw, err)
		}
	}
	return err
}

// errLongLine is readLine's error for a line over maxWireLine bytes.
var errLongLine = fmt.Errorf("longer than %d bytes", maxWireLine)

// readLine reads one line, without its newline; io.EOF with a last line
// that has none.
func readLine(rd *bufio.Reader) ([]byte, error) {
	var line []byte
	for {
		chunk, err := rd.ReadSlice('\n')
		if len(line)+len(chunk) > maxWireLine+1 {
			return nil, errLongLine
		}
		line = append(line, chunk...)
		switch {
		case err == nil:
			return line[:len(line)-1], nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		default:
			return line, err
		}
	}
}

// RecordsHandler serves POST RecordsPath on the agent's local API: it
// reads the body (ReadRecords) and the LostRecordsHeader, then hands
// every record to accept at once. A body it cannot read in full is
// answered 400 (413 if too large, 415 if not NDJSON), naming the problem,
// and nothing of it is accepted. accept runs on the request's goroutine;
// when it returns an error (the agent cannot take records yet), the
// answer is 503 and the proxy sends the records again later. Records
// accepted are answered 204.
func RecordsHandler(accept func(records []WireRecord, lost uint64) error) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if ct := r.Header.Get("Content-Type"); ct != "" {
			if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/x-ndjson" {
				http.Error(w, fmt.Sprintf("content type %q: want application/x-ndjson, one request record per line", ct), http.StatusUnsupportedMediaType)
				return
			}
		}
		var lost uint64
		if s := r.Header.Get(LostRecordsHeader); s != "" {
			var err error
			if lost, err = strconv.ParseUint(s, 10, 64); err != nil {
				http.Error(w, fmt.Sprintf("%s %q: want a number of records, 0 or more", LostRecordsHeader, s), http.StatusBadRequest)
				return
			}
		}
		records, err := ReadRecords(http.MaxBytesReader(w, r.Body, maxRecordsBody))
		if err != nil {
			code := http.StatusBadRequest
			if mbe := (*http.MaxBytesError)(nil); errors.As(err, &mbe) {
				code = http.StatusRequestEntityTooLarge
			}
			http.Error(w, "request records: "+err.Error(), code)
			return
		}
		if err := accept(records, lost); err != nil {
			http.Error(w, "request records: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
}

// Defaults of RecordSenderOptions.
const (
	DefaultRecordBuffer   = 4096
	DefaultRecordBatch    = 512
	DefaultRecordInterval = 100 * time.Millisecond
	// recordRetryMax is the longest a RecordSender waits between tries
	// while the agent is away.
	recordRetryMax = 5 * time.Second
	// postTimeout bounds one POST.
	postTimeout = 5 * time.Second
)

// RecordSenderOptions configure a RecordSender.
type RecordSenderOptions struct {
	// Client reaches the agent's local API: its transport dials the
	// agent's socket. Required.
	Client *http.Client
	// Buffer is the most records that wait to be sent; optional,
	// DefaultRecordBuffer.
	Buffer int
	// Batch is the most records one POST carries, and how many waiting
	// make the sender send before Interval is up; optional,
	// DefaultRecordBatch, at most MaxRecordsPerPost.
	Batch int
	// Interval is how long a record waits, at most, while the agent is
	// there; optional, DefaultRecordInterval.
	Interval time.Duration
	Logger   *slog.Logger // optional: discards logs when nil
}

// RecordSender takes the proxy's request records (Record, the proxy's
// Options.Record) to the agent: it keeps them in a bounded buffer and
// POSTs them to the agent's RecordsPath in batches (Run), one line of
// JSON each (WireRecord).
//
// Record never blocks on the agent: it copies the record into the buffer,
// or, when the buffer is full, drops it and counts it. While the agent is
// away (restarting, say) records wait in the buffer and are sent once it
// is back; a batch the agent refuses as malformed is dropped and counted.
// Dropped records are reported to the agent with the next batch it takes
// (LostRecordsHeader) and logged. Its methods are safe for concurrent use.
type RecordSender struct {
	client   *http.Client
	batch    int
	interval time.Duration
	log      *slog.Logger
	kick     chan struct{} // a batch is waiting; buffered, never blocks

	mu sync.Mutex
	// ring holds the waiting records, oldest at ring[head]; guarded by
	// mu, as are head, n, unreported and dropping, except that send reads
	// the records it is sending without it (see send).
	ring       []RequestRecord
	head, n    int
	unreported uint64 // dropped and not yet reported to the agent
	dropping   bool   // records are being dropped; logged once per episode

	sendMu sync.Mutex   // one send at a time: Run's and Flush's
	out    []WireRecord // guarded by sendMu
	body   bytes.Buffer // guarded by sendMu

	sent, dropped, refused atomic.Uint64
}

// NewRecordSender returns a RecordSender; Run sends what it buffers.
func NewRecordSender(o RecordSenderOptions) *RecordSender {
	s := &RecordSender{client: o.Client, batch: o.Batch, interval: o.Interval, log: o.Logger, kick: make(chan struct{}, 1)}
	buffer := o.Buffer
	if buffer <= 0 {
		buffer = DefaultRecordBuffer
	}
	if s.batch <= 0 {
		s.batch = DefaultRecordBatch
	}
	s.batch = min(s.batch, buffer, MaxRecordsPerPost)
	if s.interval <= 0 {
		s.interval = DefaultRecordInterval
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.ring = make([]RequestRecord, buffer)
	return s
}

// Record buffers r to be sent, or drops it if the buffer is full. It does
// not block and does not allocate.
func (s *RecordSender) Record(r RequestRecord) {
	s.mu.Lock()
	if s.n == len(s.ring) {
		s.unreported++
		first := !s.dropping
		s.dropping = true
		s.mu.Unlock()
		s.dropped.Add(1)
		if first {
			s.log.Warn("request records dropped: the buffer for the agent is full; is the agent running?", "buffer", len(s.ring))
		}
		return
	}
	s.ring[(s.head+s.n)%len(s.ring)] = r
	s.n++
	full := s.n >= s.batch
	s.mu.Unlock()
	if full {
		select {
		case s.kick <- struct{}{}:
		default:
		}
	}
}

// RecordStats are a RecordSender's counters.
type RecordStats struct {
	Sent    uint64 // records the agent took
	Dropped uint64 // records dropped because the buffer was full
	Refused uint64 // records dropped because the agent refused them as malformed
	Waiting int    // records in the buffer now
}

// Stats returns the sender's counters.
func (s *RecordSender) Stats() RecordStats {
	s.mu.Lock()
	waiting := s.n
	s.mu.Unlock()
	return RecordStats{Sent: s.sent.Load(), Dropped: s.dropped.Load(), Refused: s.refused.Load(), Waiting: waiting}
}

// Run sends the buffered records until ctx ends: every Interval, or at
// once when a batch is waiting. While the agent does not take them, it
// tries again less often, up to every 5 s, and keeps them meanwhile.
// Records still waiting when ctx ends are left for Flush.
func (s *RecordSender) Run(ctx context.Context) {
	wait := s.interval
	timer := time.NewTimer(wait)
	defer timer.Stop()
	failing := false
	for {
		all := true // the interval is up: send every record waiting
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-s.kick:
			if failing {
				continue // the timer paces retries
			}
			all = false // full batches only; the rest waits for the interval
		}
		// A post in flight is not cut when ctx ends (postTimeout bounds
		// it): the agent may have taken the batch already, and cutting
		// the exchange would keep those records to be sent again by Flush.
		err := s.send(context.WithoutCancel(ctx), all)
		if ctx.Err() != nil {
			return
		}
		switch {
		case err != nil && !failing:
			s.log.Warn("cannot send request records to the agent; keeping them until it is back", "err", err, "buffer", len(s.ring))
			failing = true
		case err == nil && failing:
			s.log.Info("sending request records to the agent again")
			failing = false
		}
		if failing {
			wait = min(2*wait, recordRetryMax)
		} else {
			wait = s.interval
		}
		timer.Reset(wait)
	}
}

// Flush sends every record waiting, as the proxy stops. It returns the
// first error that leaves records unsent, or ctx's.
func (s *RecordSender) Flush(ctx context.Context) error {
	return s.send(ctx, true)
}

// send POSTs the waiting records, a batch at a time, until none are left
// (or, unless all, less than a full batch) or the agent does not take a
// batch. A batch the agent refuses as malformed (a 4xx) is dropped and
// counted, and sending goes on.
func (s *RecordSender) send(ctx context.Context, all bool) error {
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	for {
		s.mu.Lock()
		head, k, lost := s.head, min(s.n, s.batch), s.unreported
		s.mu.Unlock()
		if k == 0 && lost == 0 || !all && k < s.batch {
			return nil
		}
		// Only send removes records, and Record writes past the first n:
		// the k slots from head are read without the lock, which Record
		// needs.
		s.out = s.out[:0]
		for i := range k {
			s.out = append(s.out, NewWireRecord(s.ring[(head+i)%len(s.ring)]))
		}
		refused, err := s.post(ctx, s.out, lost)
		if err != nil && (!refused || k == 0) {
			// A refused report of lost records alone would be refused
			// again: the next batch carries it.
			return err
		}
		// Only send removes records, so the first k are those sent.
		s.mu.Lock()
		for i := range k {
			s.ring[(s.head+i)%len(s.ring)] = RequestRecord{} // let go of their strings
		}
		s.head, s.n = (s.head+k)%len(s.ring), s.n-k
		if refused {
			s.unreported += uint64(k)
		} else {
			s.unreported -= lost
		}
		if s.n < len(s.ring) && s.dropping {
			s.dropping = false
		}
		s.mu.Unlock()
		if refused {
			s.refused.Add(uint64(k))
			s.log.Error("the agent refused request records; they are dropped", "records", k, "err", err)
			continue
		}
		s.sent.Add(uint64(k))
	}
}

// post sends one batch. refused says the agent answered that the batch
// is malformed: sending it again would not help.
func (s *RecordSender) post(ctx context.Context, batch []WireRecord, lost uint64) (refused bool, err error) {
	s.body.Reset()
	enc := json.NewEncoder(&s.body)
	for i := range batch {
		if err := enc.Encode(&batch[i]); err != nil {
			return true, fmt.Errorf("encode a request record: %w", err)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, postTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://agent"+RecordsPath, bytes.NewReader(s.body.Bytes()))
	if err != nil {
		return false, err
	}
	req.Header.Set("Content-Type", "application/x-ndjson")
	if lost > 0 {
		req.Header.Set(LostRecordsHeader, strconv.FormatUint(lost, 10))
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	switch {
	case resp.StatusCode/100 == 2:
		return false, nil
	case resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusMethodNotAllowed:
		// An agent older than the proxy: keep the records for the one
		// that replaces it.
		return false, fmt.Errorf("the agent does not take request records (%s): is it older than the proxy?", resp.Status)
	case resp.StatusCode == http.StatusBadRequest || resp.StatusCode == http.StatusRequestEntityTooLarge ||
		resp.StatusCode == http.StatusUnsupportedMediaType:
		return true, fmt.Errorf("agent answered %s: %s", resp.Status, strings.TrimSpace(string(msg)))
	}
	return false, fmt.Errorf("agent answered %s: %s", resp.Status, strings.TrimSpace(string(msg)))
}
