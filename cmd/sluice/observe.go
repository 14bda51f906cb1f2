package main

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/sluice-mesh/sluice/sockops/flow"
	"github.com/sluice-mesh/sluice/sockops/observe"
)

// observeFlags are the flags of `sluice observe`.
type observeFlags struct {
	socket       string
	follow       bool
	last         int
	since        string
	fromWorkload string
	toWorkload   string
	namespace    string
	toService    string
	fromIdentity string
	verdict      string
	port         int
	event        string
	httpMethod   string
	httpCode     string
	output       string
}

func newObserveCommand() *cobra.Command {
	var f observeFlags
	cmd := &cobra.Command{
		Use:   "observe",
		Short: "Show the flows the local agent recorded (needs root)",
		Long: "Prints flow records from the agent on this node: the last 100 by default, those --last\n" +
			"or --since select, or with --follow those that come next, until Ctrl-C. Filters combine:\n" +
			"a flow is shown if it matches every one given. See docs/observe.md.",
		Example: "  sluice observe --last 20 --verdict denied\n" +
			"  sluice observe -f --namespace shop -o json\n" +
			"  sluice observe --since 5m --from-identity 'spiffe://example.org/ns/shop/*' -o table\n" +
			"  sluice observe -f --event request --http-code 5xx",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runObserve(cmd.Context(), f, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.socket, "socket", observe.DefaultSocket, "the agent's observe socket")
	fl.BoolVarP(&f.follow, "follow", "f", false, "after the stored flows, print new ones as they happen, until interrupted")
	fl.IntVar(&f.last, "last", 0, "print the last N matching flows (default: 100, or none with --follow)")
	fl.StringVar(&f.since, "since", "", "print flows from this time on: RFC 3339 (2026-03-01T12:00:00Z) or a duration ago (5m)")
	fl.StringVar(&f.fromWorkload, "from-workload", "", "only flows from this workload: name or namespace/name")
	fl.StringVar(&f.toWorkload, "to-workload", "", "only flows to this workload: name or namespace/name")
	fl.StringVar(&f.namespace, "namespace", "", "only flows from or to this namespace")
	fl.StringVar(&f.toService, "to-service", "", "only flows to this service")
	fl.StringVar(&f.fromIdentity, "from-identity", "", "only flows from this SPIFFE ID, or IDs with a prefix ending in * (spiffe://td/ns/shop/*)")
	fl.StringVar(&f.verdict, "verdict", "", "only flows with this verdict: allowed, denied or audit")
	fl.IntVar(&f.port, "port", 0, "only flows to this port: the backend's or the service's")
	fl.StringVar(&f.event, "event", "", "only flows of this event: open, close, deny, terminate, or request (the L7 proxy's requests)")
	fl.StringVar(&f.httpMethod, "http-method", "", "only requests with this method (GET, POST, ...)")
	fl.StringVar(&f.httpCode, "http-code", "", "only requests answered with this code (404) or class of codes (5xx)")
	fl.StringVarP(&f.output, "output", "o", string(flow.FormatCompact), "output format: table, compact or json")
	return cmd
}

// query checks the flags and returns the query and format they ask for.
func (f observeFlags) query(now time.Time) (observe.Query, flow.Format, error) {
	format, err := flow.ParseFormat(f.output)
	if err != nil {
		return observe.Query{}, "", fmt.Errorf("-o: %w", err)
	}
	q := observe.Query{Last: f.last, Follow: f.follow, Filter: flow.Filter{
		FromWorkload: f.fromWorkload, ToWorkload: f.toWorkload, Namespace: f.namespace,
		ToService: f.toService, FromIdentity: f.fromIdentity,
	}}
	if f.last < 0 {
		return observe.Query{}, "", fmt.Errorf("--last %d: want a number of flows, 0 or more", f.last)
	}
	if f.since != "" {
		if q.Since, err = observe.ParseSince(f.since, now); err != nil {
			return observe.Query{}, "", fmt.Errorf("--since %q: %w", f.since, err)
		}
	}
	for _, w := range []struct{ flag, value string }{{"--from-workload", f.fromWorkload}, {"--to-workload", f.toWorkload}} {
		if w.value != "" {
			if err := flow.CheckWorkload(w.value); err != nil {
				return observe.Query{}, "", fmt.Errorf("%s: %w", w.flag, err)
			}
		}
	}
	if f.fromIdentity != "" {
		if err := flow.CheckIdentity(f.fromIdentity); err != nil {
			return observe.Query{}, "", fmt.Errorf("--from-identity: %w", err)
		}
	}
	if f.verdict != "" {
		if q.Filter.Verdict, err = flow.ParseVerdict(f.verdict); err != nil {
			return observe.Query{}, "", fmt.Errorf("--verdict: %w", err)
		}
	}
	if f.port < 0 || f.port > 65535 {
		return observe.Query{}, "", fmt.Errorf("--port %d: want a port, 1 to 65535", f.port)
	}
	q.Filter.Port = uint16(f.port)
	if f.event != "" {
		if q.Filter.Event, err = flow.ParseEvent(f.event); err != nil {
			return observe.Query{}, "", fmt.Errorf("--event: %w", err)
		}
	}
	if f.httpMethod != "" {
		if err := flow.CheckHTTPMethod(f.httpMethod); err != nil {
			return observe.Query{}, "", fmt.Errorf("--http-method: %w", err)
		}
		q.Filter.HTTPMethod = f.httpMethod
	}
	if f.httpCode != "" {
		if err := flow.CheckHTTPCode(f.httpCode); err != nil {
			return observe.Query{}, "", fmt.Errorf("--http-code: %w", err)
		}
		q.Filter.HTTPCode = f.httpCode
	}
	return q, format, nil
}

// runObserve prints the flows f asks for. With --follow it runs until ctx
// ends, which is not an error.
func runObserve(ctx context.Context, f observeFlags, stdout, stderr io.Writer) error {
	q, format, err := f.query(time.Now())
	if err != nil {
		return err
	}
	c, err := observe.Dial(f.socket)
	if err != nil {
		return err
	}
	defer c.Close()
	out := stdout
	if !f.follow {
		// Many flows at once: write them in large pieces.
		bw := bufio.NewWriter(stdout)
		defer bw.Flush()
		out = bw
	}
	p := flow.NewPrinter(out, format, flow.PrinterOptions{Location: time.Local, Stream: f.follow})
	if f.follow {
		if err := p.Flush(); err != nil { // the table's header, before the first flow
			return err
		}
	}
	lost := func(n uint64) {
		fmt.Fprintf(stderr, "%d %s lost: the agent dropped them because this client read too slowly\n", n, plural(n, "flow", "flows"))
	}
	err = c.Flows(ctx, q, p.Print, lost)
	if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
		err = nil // interrupted: the usual way to stop following
	} else if err == nil && f.follow {
		err = fmt.Errorf("the agent at %s ended the stream; has it stopped?", f.socket)
	}
	if ferr := p.Flush(); err == nil {
		err = ferr
	}
	return err
}

func plural(n uint64, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

func newStatusCommand() *cobra.Command {
	var socket, output string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the local agent's health (needs root)",
		Long: "Prints the agent's state: its xDS stream, what it programs into the kernel, how full each\n" +
			"map is, the flow records it holds and lost, and the same-node fast path's counters.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "text" && output != "json" {
				return fmt.Errorf("-o %q: want text or json", output)
			}
			c, err := observe.Dial(socket)
			if err != nil {
				return err
			}
			defer c.Close()
			s, err := c.Status(cmd.Context())
			if err != nil {
				return err
			}
			if output == "json" {
				b, err := json.MarshalIndent(s, "", "  ")
				if err != nil {
					return err
				}
				_, err = fmt.Fprintf(cmd.OutOrStdout(), "%s\n", b)
				return err
			}
			return renderStatus(cmd.OutOrStdout(), s, time.Now())
		},
	}
	cmd.Flags().StringVar(&socket, "socket", observe.DefaultSocket, "the agent's observe socket")
	cmd.Flags().StringVarP(&output, "output", "o", "text", "output format: text or json")
	return cmd
}

// renderStatus writes s for a person to read; times are shown in now's
// zone, ages relative to now.
func renderStatus(w io.Writer, s observe.Status, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	when := func(t time.Time) string {
		return t.In(now.Location()).Format("2006-01-02 15:04:05 MST")
	}
	ago := func(t time.Time) string { return now.Sub(t).Round(time.Second).String() }
	line := func(key, format string, args ...any) { fmt.Fprintf(tw, key+"\t"+format+"\n", args...) }

	line("node", "%s", s.Node)
	line("version", "%s", s.Version)
	if s.Started.IsZero() {
		line("uptime", "unknown")
	} else {
		line("uptime", "%s, since %s", ago(s.Started), when(s.Started))
	}

	x := s.XDS
	state := "disconnected"
	if x.Connected {
		state = "connected"
	}
	if !x.Since.IsZero() {
		state += fmt.Sprintf(" since %s (%s)", when(x.Since), ago(x.Since))
	}
	line("xds", "%s, %s, %s", cmp.Or(x.Server, "(no server)"), cmp.Or(x.Mode, "(mode unknown)"), state)
	reconnects := fmt.Sprintf("%d", x.Reconnects)
	if x.LastError != "" {
		reconnects += "; last stream ended: " + x.LastError
	}
	line("reconnects", "%s", reconnects)
	applied := "none yet"
	if len(x.Applied) > 0 {
		var parts []string
		for _, t := range slices.Sorted(maps.Keys(x.Applied)) {
			parts = append(parts, shortType(t)+" "+x.Applied[t])
		}
		applied = strings.Join(parts, ", ")
	}
	line("applied", "%s", applied)
	line("nacks", "%d for capacity, %d invalid", x.NACKs.Capacity, x.NACKs.Invalid)
	if n := x.LastNACK; n != nil {
		version := ""
		if n.Version != "" {
			version = " version " + n.Version
		}
		line("last nack", "%s%s, %s (%s ago): %s", shortType(n.TypeURL), version, when(n.Time), ago(n.Time), n.Error)
	}

	line("workloads", "%d", s.Workloads)
	line("services", "%d", s.Services)
	line("backends", "%d", s.Backends)
	line("policies", "%d", s.Policies)

	if len(s.Maps) == 0 {
		line("maps", "none reported")
	}
	for i, m := range s.Maps {
		key := ""
		if i == 0 {
			key = "maps"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d/%d\t%s\n", key, m.Name, m.Entries, m.Capacity, percent(m.Entries, m.Capacity))
	}

	line("map writes", "%d entries since the agent started", s.Dataplane.EntriesWritten)

	fl := s.Flows
	line("flows", "%d/%d stored (%s), %d recorded; lost: %d in the kernel, %d to slow subscribers, %d in the L7 proxy",
		fl.Stored, fl.Capacity, percent(fl.Stored, fl.Capacity), fl.Total, fl.LostKernel, fl.LostSubscribers, fl.LostProxy)

	fp := s.FastPath
	line("fast path", "default %s; %d sockets on it, %d registered, %s carried; left on the normal path: %d (map full), %d (peer not ready), %d (splice)",
		cmp.Or(fp.Default, "unknown"), fp.Active, fp.Registered, humanBytes(fp.Redirected), fp.Full, fp.Fallbacks, fp.SpliceExcluded)
	return tw.Flush()
}

// shortType names an xDS type URL by its message name:
// type.googleapis.com/envoy.config.cluster.v3.Cluster is Cluster.
func shortType(url string) string {
	return url[strings.LastIndexAny(url, "/.")+1:]
}

func percent(n, of int) string {
	if of <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f%%", 100*float64(n)/float64(of))
}

// humanBytes formats n with a binary unit.
func humanBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	v, i := float64(n)/unit, 0
	for v >= unit && i < 5 {
		v /= unit
		i++
	}
	return fmt.Sprintf("%.1f %ciB", v, "KMGTPE"[i])
}
