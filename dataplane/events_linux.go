package dataplane

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"runtime"
	"time"
	"unsafe"

	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"
)

// EventReader reads the node's policy events. One reader at a time.
type EventReader struct {
	d        *Dataplane
	r        *ringbuf.Reader
	rec      ringbuf.Record   // reused by every read
	raws     []serviceSlEvent // a batch before it is decoded
	deadline time.Time
	pending  error // an error met while draining a batch, for the next call
}

// Events opens the reader of policy events. Events no reader takes in
// time are dropped by the kernel and counted in Stats.EventsLost.
func (d *Dataplane) Events() (*EventReader, error) {
	r, err := ringbuf.NewReader(d.objs.SlEvents)
	if err != nil {
		return nil, fmt.Errorf("open policy events: %w", err)
	}
	return &EventReader{d: d, r: r}, nil
}

// ErrClosed is returned by EventReader.ReadBatch once the reader is closed.
var ErrClosed = errors.New("closed")

// ReadBatch blocks until an event arrives, the deadline passes
// (os.ErrDeadlineExceeded) or the reader is closed (ErrClosed); then it
// appends to dst the events already waiting, up to cap(dst) (at least
// one), without waiting for more. An error met after the first event is
// returned by the next call. Flow events do not wake a blocked call until
// many have gathered: a reader that wants them soon sets a deadline, after
// which ReadBatch returns the events waiting before reporting the deadline.
func (er *EventReader) ReadBatch(dst []Event) ([]Event, error) {
	if err := er.pending; err != nil {
		er.pending = nil
		return dst, err
	}
	er.raws = er.raws[:0]
	if err := er.readRaw(); err != nil {
		return dst, err
	}
	room := max(cap(dst)-len(dst), 1)
	if room > 1 {
		// A deadline in the past takes what is waiting and stops.
		er.r.SetDeadline(time.Unix(1, 0))
		for len(er.raws) < room {
			if err := er.readRaw(); err != nil {
				if !errors.Is(err, os.ErrDeadlineExceeded) {
					er.pending = err
				}
				break
			}
		}
		er.r.SetDeadline(er.deadline)
	}
	er.d.mu.Lock()
	defer er.d.mu.Unlock()
	for i := range er.raws {
		dst = append(dst, er.d.event(&er.raws[i]))
	}
	return dst, nil
}

// readRaw appends the next record to er.raws.
func (er *EventReader) readRaw() error {
	err := er.r.ReadInto(&er.rec)
	if errors.Is(err, ringbuf.ErrClosed) {
		return ErrClosed
	}
	if err != nil {
		return err
	}
	// The record has the layout of serviceSlEvent in native byte order:
	// both come from the same BTF.
	if len(er.rec.RawSample) < int(unsafe.Sizeof(serviceSlEvent{})) {
		return fmt.Errorf("decode event: %d bytes, want %d", len(er.rec.RawSample), unsafe.Sizeof(serviceSlEvent{}))
	}
	er.raws = append(er.raws, *(*serviceSlEvent)(unsafe.Pointer(&er.rec.RawSample[0])))
	return nil
}

// SetDeadline sets the deadline of ReadBatch; the zero time means none.
func (er *EventReader) SetDeadline(t time.Time) {
	er.deadline = t
	er.r.SetDeadline(t)
}

// Close stops the reader; a blocked ReadBatch returns ErrClosed.
func (er *EventReader) Close() error { return er.r.Close() }

// event decodes raw; d.mu is held.
func (d *Dataplane) event(raw *serviceSlEvent) Event {
	e := Event{
		Kind:        EventKind(raw.Kind),
		Time:        time.Duration(raw.TimeNs),
		Cookie:      raw.Cookie,
		Netns:       raw.Netns,
		Source:      netip.AddrPortFrom(addrFromWords(raw.Src, raw.Family), ntohs(raw.SrcPort)),
		Destination: netip.AddrPortFrom(addrFromWords(raw.Dst, raw.Family), ntohs(raw.DstPort)),
		Identity:    raw.Identity,
		Deny:        raw.Flags&1 != 0,
		ShadowDeny:  raw.Shadow == 2,
		Server:      raw.Side == 2,
		BytesSent:   raw.BytesSent,
		BytesRecv:   raw.BytesRecv,
		Duration:    time.Duration(raw.DurationNs),
		RTT:         time.Duration(raw.RttUs) * time.Microsecond,
		Retransmits: raw.Retrans,
		FastPath:    raw.Fast != 0,
	}
	if raw.Vport != 0 {
		e.Service = netip.AddrPortFrom(addrFromWords(raw.Vip, raw.Family), ntohs(raw.Vport))
	}
	e.SPIFFEID = d.authz.names[raw.Identity]
	e.Rule = d.authz.rules[raw.Rule]
	e.ShadowRule = d.authz.rules[raw.ShadowRule]
	return e
}

// RuleStats reads the counters of the rules in force. Counters start at
// zero when a rule first appears, and when the agent restarts.
func (d *Dataplane) RuleStats() ([]RuleStat, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]RuleStat, 0, len(d.authz.rules))
	for id, r := range d.authz.rules {
		var per []serviceSlRuleStat
		if err := d.objs.SlRuleStats.Lookup(id, &per); err != nil {
			return nil, fmt.Errorf("read counters of rule %d: %w", id, err)
		}
		st := RuleStat{Rule: r}
		for _, c := range per {
			st.AllowConnect += c.Allow[0]
			st.AllowIngress += c.Allow[1]
			st.DenyConnect += c.Deny[0]
			st.DenyIngress += c.Deny[1]
		}
		out = append(out, st)
	}
	return out, nil
}

// Terminate destroys, in each of the network namespaces at the given paths
// ("" is the caller's own), the TCP connections that policy denied: those
// marked at their destination, and those a continuous policy denies since
// they opened. The peer gets a reset. It returns how many it destroyed.
// It also makes the namespaces' listeners that were listening before the
// dataplane was attached keep their SYNs, so that a client's tag can be
// read on the connections they accept from then on.
//
// It needs CAP_SYS_ADMIN to enter the namespaces.
func (d *Dataplane) Terminate(netns ...string) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return 0, errors.New("terminate: dataplane is closed")
	}
	if d.iter == nil {
		it, err := link.AttachIter(link.IterOptions{Program: d.objs.SlSweep})
		if err != nil {
			return 0, fmt.Errorf("attach terminating iterator: %w", err)
		}
		d.iter = it
	}
	before, err := d.readStat(serviceSlStatSL_STAT_TERMINATED)
	if err != nil {
		return 0, err
	}
	var errs []error
	for _, ns := range netns {
		if err := runIterIn(d.iter, ns); err != nil {
			errs = append(errs, err)
		}
	}
	after, err := d.readStat(serviceSlStatSL_STAT_TERMINATED)
	if err != nil {
		errs = append(errs, err)
	}
	return int(after - before), errors.Join(errs...)
}

// runIterIn runs the iterator once in the network namespace at path. The
// iterator visits the sockets of the namespace its instance was opened in,
// so the instance is opened on a thread that entered the namespace.
func runIterIn(it *link.Iter, path string) error {
	open := it.Open
	if path != "" {
		open = func() (io.ReadCloser, error) { return openIn(it, path) }
	}
	r, err := open()
	if err != nil {
		return fmt.Errorf("open terminating iterator in %q: %w", path, err)
	}
	defer r.Close()
	if _, err := io.Copy(io.Discard, r); err != nil {
		return fmt.Errorf("run terminating iterator in %q: %w", path, err)
	}
	return nil
}

func openIn(it *link.Iter, path string) (io.ReadCloser, error) {
	target, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer target.Close()
	type result struct {
		r   io.ReadCloser
		err error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		// The thread is left locked (and so ends with the goroutine) if
		// it could not return to its namespace.
		self, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			done <- result{err: err}
			return
		}
		defer self.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			done <- result{err: fmt.Errorf("enter network namespace: %w", err)}
			return
		}
		r, err := it.Open()
		if unix.Setns(int(self.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		done <- result{r, err}
	}()
	res := <-done
	return res.r, res.err
}

func (d *Dataplane) readStat(i serviceSlStat) (uint64, error) {
	var per []uint64
	if err := d.objs.SlStats.Lookup(uint32(i), &per); err != nil {
		return 0, fmt.Errorf("read stat %d: %w", i, err)
	}
	var sum uint64
	for _, v := range per {
		sum += v
	}
	return sum, nil
}

// flowLatency bounds how long a flow event waits to be read.
const flowLatency = 100 * time.Millisecond

// Enforce carries out what the kernel cannot do alone, until ctx ends: it
// reads the policy events, hands each to observe (which may be nil), and
// destroys denied connections in the network namespaces netns returns (""
// is the caller's own) — at once when one is denied at its destination,
// and after each change of policy for continuous policies. It returns
// ctx's error, or the first error that stops it.
func (d *Dataplane) Enforce(ctx context.Context, netns func() []string, observe func(Event)) error {
	er, err := d.Events()
	if err != nil {
		return err
	}
	// Events travel in batches, in buffers that come back when handled:
	// one hand-over per batch, not per event.
	const buffers, batch = 4, 256
	events, free := make(chan []Event, buffers), make(chan []Event, buffers)
	for range buffers {
		free <- make([]Event, 0, batch)
	}
	readErr := make(chan error, 1)
	go func() {
		for b := range free {
			// Flow events wake the reader in batches; the deadline
			// bounds how long one waits to be read.
			er.SetDeadline(time.Now().Add(flowLatency))
			b, err := er.ReadBatch(b)
			if len(b) > 0 {
				events <- b
			} else {
				free <- b
			}
			if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
				readErr <- err
				close(events)
				return
			}
		}
	}()
	defer func() {
		er.Close()
		for b := range events { // until the reader goroutine ends
			free <- b
		}
	}()
	terminate := func() {
		if _, err := d.Terminate(netns()...); err != nil {
			d.log.Warn("dataplane: could not terminate denied connections", "err", err)
		}
	}
	// Listeners older than the programs are prepared, and connections a
	// policy in force denies are ended, before waiting for news.
	terminate()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case b, ok := <-events:
			if !ok {
				return <-readErr
			}
			// One sweep serves every denial already waiting: a burst of
			// denied connections (a scan) costs one sweep, not one each.
			sweep := false
			for more := true; more; {
				for _, e := range b {
					if observe != nil {
						observe(e)
					}
					sweep = sweep || e.Kind == EventDenyIngress
				}
				free <- b[:0]
				select {
				case b, more = <-events:
				default:
					more = false
				}
			}
			if sweep {
				terminate()
			}
		case <-d.policyChanged:
			terminate()
		}
	}
}
