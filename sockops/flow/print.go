package flow

import (
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"text/tabwriter"
	"time"
	"unicode/utf8"
)

// Format is a way of printing flows.
type Format string

// Formats.
const (
	FormatTable   Format = "table"   // aligned columns under a header
	FormatCompact Format = "compact" // one short line per flow
	FormatJSON    Format = "json"    // one JSON object (the stable Flow form) per line
)

// ParseFormat returns the format named s.
func ParseFormat(s string) (Format, error) {
	switch f := Format(s); f {
	case FormatTable, FormatCompact, FormatJSON:
		return f, nil
	}
	return "", fmt.Errorf("unknown format %q: want table, compact or json", s)
}

// PrinterOptions configure a Printer. Every field is optional.
type PrinterOptions struct {
	// Location is the zone times are shown in; nil shows each flow's
	// time in its own zone.
	Location *time.Location
	// Stream writes each table row as it is printed rather than at Flush,
	// for flows that arrive one at a time. Columns then have fixed
	// minimum widths, so rows line up unless a value is longer.
	Stream bool
}

// Printer writes flows to an io.Writer in one Format. Compact and JSON
// lines, and streamed table rows, are written by Print with one Write
// each; a table that is not streamed is written by Flush, aligned over
// all its rows. A Printer is not safe for concurrent use.
type Printer struct {
	w      io.Writer
	format Format
	opts   PrinterOptions
	tw     *tabwriter.Writer // the table, when not streamed
	header bool              // the table header was written
	line   []byte            // reused for each line
}

// NewPrinter returns a Printer that writes flows to w in format.
func NewPrinter(w io.Writer, format Format, opts PrinterOptions) *Printer {
	p := &Printer{w: w, format: format, opts: opts}
	if format == FormatTable && !opts.Stream {
		p.tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	}
	return p
}

// Print writes f.
func (p *Printer) Print(f Flow) error {
	switch p.format {
	case FormatJSON:
		b, err := json.Marshal(f)
		if err != nil {
			return fmt.Errorf("encode flow %d: %w", f.Seq, err)
		}
		p.line = append(append(p.line[:0], b...), '\n')
	case FormatCompact:
		p.line = append(p.compact(p.line[:0], f), '\n')
	case FormatTable:
		p.line = p.row(p.line[:0], p.cells(f))
	default:
		return fmt.Errorf("unknown format %q: want table, compact or json", p.format)
	}
	return p.write()
}

// Flush writes the table header if no flow was printed yet, and a table
// that is not streamed. It does nothing for the other formats.
func (p *Printer) Flush() error {
	if p.format != FormatTable {
		return nil
	}
	if !p.header {
		p.line = p.line[:0]
		if err := p.write(); err != nil {
			return err
		}
	}
	if p.tw != nil {
		return p.tw.Flush()
	}
	return nil
}

// write writes p.line, preceded by the table header the first time.
func (p *Printer) write() error {
	w := p.w
	if p.format == FormatTable {
		if !p.header {
			p.header = true
			p.line = append(p.row(nil, tableHeader[:]), p.line...)
		}
		if p.tw != nil {
			w = p.tw
		}
	}
	if len(p.line) == 0 {
		return nil
	}
	_, err := w.Write(p.line)
	return err
}

// tableHeader and tableWidths are read-only.
var tableHeader = [...]string{"TIME", "EVENT", "SOURCE", "SERVICE", "DESTINATION", "VERDICT", "SENT", "RECEIVED", "DURATION", "RTT", "FAST", "POLICY", "REQUEST"}

// tableWidths are the columns' minimum widths when the table is streamed,
// wide enough for typical names and IPv4 addresses.
var tableWidths = [...]int{12, 9, 20, 26, 34, 7, 8, 8, 9, 8, 4, 20, 0}

// row appends a table row: cells separated by tabs for the tabwriter, or
// padded to the minimum widths when streamed.
func (p *Printer) row(b []byte, cells []string) []byte {
	for i, c := range cells {
		last := i == len(cells)-1
		switch {
		case p.tw != nil && !last:
			b = append(append(b, c...), '\t')
		case p.tw == nil && !last:
			b = append(b, c...)
			for range max(tableWidths[i]-utf8.RuneCountInString(c), 0) + 2 {
				b = append(b, ' ')
			}
		default:
			b = append(b, c...)
		}
	}
	return append(b, '\n')
}

func (p *Printer) cells(f Flow) []string {
	none := "-"
	svc, sent, recv, dur, rtt, fast, policy, req := none, none, none, none, none, none, none, none
	if f.Service != nil {
		svc = service(*f.Service)
	}
	if f.Event == EventClose || f.Event == EventTerminate {
		sent, recv = strconv.FormatUint(f.BytesSent, 10), strconv.FormatUint(f.BytesRecv, 10)
		dur, rtt = duration(f.Duration), duration(f.RTT)
	}
	if f.HTTP != nil {
		dur = duration(f.Duration)
		req = string(httpError(request(nil, f.HTTP), f.HTTP))
	}
	if f.FastPath {
		fast = "yes"
	}
	if f.Policy != "" {
		policy = f.Policy
	}
	return []string{p.clock(f.Time), string(f.Event), source(f.Source), svc, destination(f.Destination),
		string(f.Verdict), sent, recv, dur, rtt, fast, policy, req}
}

// request appends a request's method, path and response code:
//
//	GET /cart/items 200
//
// A path that was cut ends in "...".
func request(b []byte, h *HTTP) []byte {
	b = append(append(append(b, h.Method...), ' '), h.Path...)
	if h.PathTruncated {
		b = append(b, "..."...)
	}
	return strconv.AppendInt(append(b, ' '), int64(h.Code), 10)
}

// httpError appends a request's error, if it has one, quoted.
func httpError(b []byte, h *HTTP) []byte {
	if h == nil || h.Error == "" {
		return b
	}
	return strconv.AppendQuote(append(b, " error="...), h.Error)
}

// compact appends f's compact line, without the newline:
//
//	12:00:01.123 open  shop/web -> cart (10.96.0.10:80) -> shop/cart-1 10.244.1.5:8080 allowed fast
//	12:00:01.130 request shop/web -> cart (10.96.0.10:80) -> shop/cart-1 10.244.1.5:8080 allowed GET /items 200 dur=1.2ms
func (p *Printer) compact(b []byte, f Flow) []byte {
	b = append(b, p.clock(f.Time)...)
	b = fmt.Appendf(b, " %-5s %s", f.Event, source(f.Source))
	if f.Service != nil {
		b = append(b, " -> "...)
		b = append(b, f.Service.Name...)
		if f.Service.VIP.IsValid() {
			b = fmt.Appendf(b, " (%s)", f.Service.VIP)
		}
	}
	b = append(b, " -> "...)
	b = append(b, destination(f.Destination)...)
	b = append(append(b, ' '), f.Verdict...)
	if f.HTTP != nil {
		b = request(append(b, ' '), f.HTTP)
		if f.HTTP.GRPCStatus != "" {
			b = append(append(b, " grpc-status="...), f.HTTP.GRPCStatus...)
		}
		b = append(append(b, " dur="...), duration(f.Duration)...)
		if f.HTTP.Tries > 1 {
			b = strconv.AppendInt(append(b, " tries="...), int64(f.HTTP.Tries), 10)
		}
	}
	if f.FastPath {
		b = append(b, " fast"...)
	}
	if f.Policy != "" {
		b = append(append(b, " policy="...), f.Policy...)
	}
	if f.Reason != "" {
		b = append(append(b, " reason="...), f.Reason...)
	}
	b = httpError(b, f.HTTP)
	if f.Event == EventClose || f.Event == EventTerminate {
		b = fmt.Appendf(b, " sent=%d recv=%d dur=%s rtt=%s", f.BytesSent, f.BytesRecv, duration(f.Duration), duration(f.RTT))
		if f.Retransmits > 0 {
			b = fmt.Appendf(b, " retrans=%d", f.Retransmits)
		}
	}
	return b
}

func (p *Printer) clock(t time.Time) string {
	if p.opts.Location != nil {
		t = t.In(p.opts.Location)
	}
	return t.Format("15:04:05.000")
}

// name is a peer's workload, qualified by its namespace when known.
func name(p Peer) string {
	if p.Workload == "" || p.Namespace == "" {
		return p.Workload
	}
	return p.Namespace + "/" + p.Workload
}

func address(a netip.AddrPort) string {
	if !a.IsValid() {
		return "-"
	}
	return a.String()
}

// source names the client: its workload, or its address when unknown.
func source(p Peer) string {
	if n := name(p); n != "" {
		return n
	}
	return address(p.Address)
}

// destination names the backend: its workload and address.
func destination(p Peer) string {
	if n := name(p); n != "" {
		return n + " " + address(p.Address)
	}
	return address(p.Address)
}

func service(s Service) string {
	if !s.VIP.IsValid() {
		return s.Name
	}
	return s.Name + " " + s.VIP.String()
}

// duration rounds d to what a person reads: milliseconds above a second,
// microseconds below.
func duration(d time.Duration) string {
	if d >= time.Second {
		return d.Round(time.Millisecond).String()
	}
	return d.Round(time.Microsecond).String()
}
