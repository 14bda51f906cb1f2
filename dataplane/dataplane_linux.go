package dataplane

import (
	"github.com/sluice-mesh/sluice/dataplane/model"

	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// Options configures Open.
type Options struct {
	PinDir   string       // required: bpffs directory that holds this dataplane's pins
	Cgroup   string       // required: cgroup2 directory whose subtree is routed
	Capacity Capacity     // optional: zero fields take DefaultCapacity
	Logger   *slog.Logger // optional: discards logs when nil
}

// Dataplane is the loaded, attached and pinned set of routing programs and
// maps of one node. It is safe for concurrent use. Close releases it and
// leaves the datapath working; Teardown removes it.
type Dataplane struct {
	opts  Options
	log   *slog.Logger
	objs  serviceObjects
	links map[string]link.Link
	lock  *os.File // flock on PinDir: one owner at a time

	written atomic.Uint64 // map entries written or deleted since Open

	mu sync.Mutex
	// Guarded by mu.
	active      uint32                         // generation the programs read
	current     map[model.ServiceKey]*compiled // services of the active generation
	order       []*compiled                    // current in the order of the last applied state; nil after adoption
	nextID      uint32                         // id of the next new service
	epoch       uint64                         // counts plans
	mirror      chan error                     // reports the end of the standby generation's update; nil if none runs
	mirrorDirty bool                           // standby generation may differ from the active one
	authz       authz                          // identities and policy
	iter        *link.Iter                     // terminating iterator; nil until first used
	// policyChanged is signalled (never blocking) when Apply changes the
	// policy in force; Enforce then terminates what it now denies.
	policyChanged chan struct{}
	closed        bool
}

// attachment is one cgroup hook: a program, where it goes, its pin name.
type attachment struct {
	name string
	at   ebpf.AttachType
	prog func(*serviceObjects) *ebpf.Program
}

var attachments = []attachment{
	{"connect4", ebpf.AttachCGroupInet4Connect, func(o *serviceObjects) *ebpf.Program { return o.SlConnect4 }},
	{"connect6", ebpf.AttachCGroupInet6Connect, func(o *serviceObjects) *ebpf.Program { return o.SlConnect6 }},
	{"sendmsg4", ebpf.AttachCGroupUDP4Sendmsg, func(o *serviceObjects) *ebpf.Program { return o.SlSendmsg4 }},
	{"sendmsg6", ebpf.AttachCGroupUDP6Sendmsg, func(o *serviceObjects) *ebpf.Program { return o.SlSendmsg6 }},
	{"recvmsg4", ebpf.AttachCGroupUDP4Recvmsg, func(o *serviceObjects) *ebpf.Program { return o.SlRecvmsg4 }},
	{"recvmsg6", ebpf.AttachCGroupUDP6Recvmsg, func(o *serviceObjects) *ebpf.Program { return o.SlRecvmsg6 }},
	{"getpeername4", ebpf.AttachCgroupInet4GetPeername, func(o *serviceObjects) *ebpf.Program { return o.SlGetpeername4 }},
	{"getpeername6", ebpf.AttachCgroupInet6GetPeername, func(o *serviceObjects) *ebpf.Program { return o.SlGetpeername6 }},
	{"sockops", ebpf.AttachCGroupSockOps, func(o *serviceObjects) *ebpf.Program { return o.SlSockops }},
	{"ingress", ebpf.AttachCGroupInetIngress, func(o *serviceObjects) *ebpf.Program { return o.SlIngress }},
	{"egress", ebpf.AttachCGroupInetEgress, func(o *serviceObjects) *ebpf.Program { return o.SlEgress }},
}

const linkPinPrefix = "link_"

// Open loads the routing programs, attaches them to opts.Cgroup and pins
// programs' links and maps under opts.PinDir. When pins already exist (a
// previous process ran) it adopts them: the maps and their content are kept
// and each pinned link is switched to the new program atomically, so routing
// never stops. bpffs is mounted at /sys/fs/bpf when PinDir lies under it and
// nothing is mounted there yet.
func Open(opts Options) (_ *Dataplane, err error) {
	if opts.PinDir == "" || opts.Cgroup == "" {
		return nil, errors.New("dataplane options: PinDir and Cgroup are required")
	}
	opts.Capacity = opts.Capacity.WithDefaults()
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	cgroupID, err := cgroupID(opts.Cgroup)
	if err != nil {
		return nil, err
	}
	if err := EnsureBPFFS(opts.PinDir); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(opts.PinDir, 0o700); err != nil {
		return nil, fmt.Errorf("create pin directory: %w", err)
	}
	lock, err := lockDir(opts.PinDir)
	if err != nil {
		return nil, err
	}
	fresh, err := dirEmpty(opts.PinDir)
	if err != nil {
		lock.Close()
		return nil, err
	}

	d := &Dataplane{opts: opts, log: log, lock: lock, links: make(map[string]link.Link), policyChanged: make(chan struct{}, 1)}
	defer func() {
		if err != nil {
			d.release()
			if fresh {
				_ = removePins(opts.PinDir)
			}
		}
	}()

	if err := d.load(); err != nil {
		return nil, err
	}
	if err := d.attach(cgroupID); err != nil {
		return nil, err
	}
	if err := d.adoptState(); err != nil {
		return nil, err
	}
	log.Info("dataplane ready", "pin_dir", opts.PinDir, "cgroup", opts.Cgroup,
		"adopted", !fresh, "services", len(d.current))
	return d, nil
}

func (d *Dataplane) load() error {
	spec, err := loadService()
	if err != nil {
		return fmt.Errorf("load BPF spec: %w", err)
	}
	c := d.opts.Capacity
	sizes := map[string]int{
		"sl_services": 2 * c.Services, // two generations
		"sl_backends": 2 * c.Backends,
		"sl_revnat":   c.UDPReverse,
		"sl_cgroups":  c.Workloads,
		"sl_addrs":    c.Addresses,
		"sl_dests":    2 * c.PolicyDests,
		"sl_classes":  2 * c.Classes,
		"sl_verdicts": 2 * c.Verdicts,
		// Rule 0 means "no rule" and is never counted.
		"sl_rule_stats": c.Rules + 1,
		"sl_events":     c.EventBytes,
		"sl_fast":       c.FastPath,
		"sl_fast_bytes": c.FastPath,
		"sl_fast_addrs": 2 * c.Workloads, // one address per family
		"sl_l7_conns":   c.L7Conns,
	}
	for name, m := range spec.Maps {
		if strings.HasPrefix(name, ".") {
			continue // global variables: per load, never pinned
		}
		if n, ok := sizes[name]; ok {
			m.MaxEntries = uint32(n)
		}
		m.Pinning = ebpf.PinByName
	}
	err = spec.LoadAndAssign(&d.objs, &ebpf.CollectionOptions{
		Maps: ebpf.MapOptions{PinPath: d.opts.PinDir},
	})
	if errors.Is(err, ebpf.ErrMapIncompatible) {
		return fmt.Errorf("%w: %v; the pinned maps in %s were made with another capacity or version: "+
			"run `sluice uninstall` (or use the capacity they were made with)", ErrIncompatiblePins, err, d.opts.PinDir)
	}
	if err != nil {
		return fmt.Errorf("load BPF objects: %w", err)
	}
	return nil
}

// attach adopts every pinned link (replacing its program in place) or
// creates and pins a new one.
func (d *Dataplane) attach(cgroupID uint64) error {
	for _, a := range attachments {
		pin := filepath.Join(d.opts.PinDir, linkPinPrefix+a.name)
		prog := a.prog(&d.objs)
		l, err := link.LoadPinnedLink(pin, nil)
		switch {
		case err == nil:
			if err := checkLink(l, cgroupID, a); err != nil {
				l.Close()
				return fmt.Errorf("%w: %s: %v", ErrIncompatiblePins, pin, err)
			}
			if err := l.Update(prog); err != nil {
				l.Close()
				return fmt.Errorf("replace program of %s: %w", pin, err)
			}
		case errors.Is(err, os.ErrNotExist):
			l, err = link.AttachCgroup(link.CgroupOptions{Path: d.opts.Cgroup, Attach: a.at, Program: prog})
			if err != nil {
				return fmt.Errorf("attach %s to %s: %w", a.name, d.opts.Cgroup, err)
			}
			if err := l.Pin(pin); err != nil {
				l.Close()
				return fmt.Errorf("pin %s: %w", pin, err)
			}
		default:
			return fmt.Errorf("load pinned link %s: %w", pin, err)
		}
		d.links[a.name] = l
	}
	// The fast path's message program belongs to its sockhash, which holds
	// it as long as the map lives (pinned); attaching again replaces it.
	// Sockets already on the fast path keep the program they started with.
	if err := link.RawAttachProgram(link.RawAttachProgramOptions{
		Target: d.objs.SlFast.FD(), Program: d.objs.SlMsg, Attach: ebpf.AttachSkMsgVerdict,
	}); err != nil {
		return fmt.Errorf("attach the fast path's sk_msg program: %w", err)
	}
	return nil
}

func checkLink(l link.Link, cgroupID uint64, a attachment) error {
	info, err := l.Info()
	if err != nil {
		return err
	}
	cg := info.Cgroup()
	if cg == nil {
		return fmt.Errorf("not a cgroup link (type %v)", info.Type)
	}
	if cg.CgroupId != cgroupID {
		return fmt.Errorf("attached to cgroup id %d, not to the configured cgroup (id %d); tear down first to move the dataplane", cg.CgroupId, cgroupID)
	}
	if ebpf.AttachType(cg.AttachType) != a.at {
		return fmt.Errorf("attach type %v, want %v", cg.AttachType, a.at)
	}
	return nil
}

// adoptState reads what the active generation holds, so the next Apply only
// writes differences, and brings the inactive generation in line with it
// (a previous process may have stopped half way through an Apply).
func (d *Dataplane) adoptState() error {
	var cfg serviceSlConfig
	if err := d.objs.SlActive.Lookup(uint32(0), &cfg); err != nil {
		return fmt.Errorf("read active generation: %w", err)
	}
	if cfg.ActiveGen > 1 {
		return fmt.Errorf("%w: active generation %d out of range", ErrIncompatiblePins, cfg.ActiveGen)
	}
	gens, err := d.readGenerations()
	if err != nil {
		return err
	}
	var strays []serviceSlBeKey
	d.active = cfg.ActiveGen
	d.current, strays = adopt(gens[d.active])
	d.order = nil
	d.nextID = 1
	for _, c := range d.current {
		d.nextID = max(d.nextID, c.set.ID+1)
	}
	if len(strays) > 0 {
		// No service entry reaches them, so no program can read them.
		if err := deleteAll(d.objs.SlBackends, d.active, strays); err != nil {
			return fmt.Errorf("remove %d pinned backends no service owns: %w", len(strays), err)
		}
		d.log.Warn("dataplane: removed pinned backends no service owned", "count", len(strays))
	}
	return d.syncStandby(gens[1-d.active])
}

// readGenerations reads both generations, one pass over each map.
func (d *Dataplane) readGenerations() ([2]kernelEntries, error) {
	services, err := readGens[serviceSlSvcKey, serviceSlSvcValue](d.objs.SlServices)
	if err != nil {
		return [2]kernelEntries{}, fmt.Errorf("read services: %w", err)
	}
	backends, err := readGens[serviceSlBeKey, serviceSlBeValue](d.objs.SlBackends)
	if err != nil {
		return [2]kernelEntries{}, fmt.Errorf("read backends: %w", err)
	}
	return [2]kernelEntries{
		{services: services[0], backends: backends[0]},
		{services: services[1], backends: backends[1]},
	}, nil
}

// readGens returns the entries of m by generation, keyed with the
// generation cleared. Entries of any other generation are ignored.
func readGens[K comparable, V any, PK genKey[K]](m *ebpf.Map) ([2]map[K]V, error) {
	out := [2]map[K]V{make(map[K]V), make(map[K]V)}
	var k K
	var v V
	it := m.Iterate()
	for it.Next(&k, &v) {
		if gen := PK(&k).gen(); gen < 2 {
			key := k
			PK(&key).setGen(0)
			out[gen][key] = v
		}
	}
	return out, it.Err()
}

// resyncInactive makes the inactive generation equal to the active one.
func (d *Dataplane) resyncInactive() error {
	gens, err := d.readGenerations()
	if err != nil {
		return err
	}
	return d.syncStandby(gens[1-d.active])
}

// syncStandby writes into the inactive generation, which holds got, what
// makes it equal to the active one.
func (d *Dataplane) syncStandby(got kernelEntries) error {
	inactive := 1 - d.active
	if err := d.writeGeneration(inactive, diffEntries(got, flatten(d.current))); err != nil {
		d.mirrorDirty = true
		return fmt.Errorf("resync generation %d: %w", inactive, err)
	}
	d.mirrorDirty = false
	return nil
}

// Apply replaces the routing state with s. It validates and compiles s first;
// a state that is invalid or does not fit is rejected with a
// *model.EntryError naming the offending entry, and the previous state stays
// in force. Services equal to those in force are not recompiled, so the cost
// follows what changed; an unchanged state writes nothing.
//
// The maps hold two generations. Apply writes the changes into the standby
// one and switches the programs to it with a single map update; from then
// on the new state is in force and Apply returns. In the background it then
// waits until no program can still be reading the old generation (an RCU
// grace period) and brings that one up to date; the next Apply waits for
// that to finish before it starts writing.
func (d *Dataplane) Apply(s model.State) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return errors.New("apply: dataplane is closed")
	}
	d.waitMirror()

	ca, err := compileAuthz(s, d.opts.Capacity)
	if err != nil {
		return err
	}
	d.epoch++
	p, err := plan(s, d.opts.Capacity, d.current, d.order, d.nextID, d.epoch)
	if err != nil {
		return err
	}
	// Identities and policy go first: a new endpoint is never reachable
	// before its policy is in force.
	if err := d.applyAuthz(ca); err != nil {
		return fmt.Errorf("apply: %w; previous routing still in force", err)
	}
	diff := diffPlanned(d.current, p)
	commit := func() {
		for key, c := range p.changed {
			d.current[key] = c
		}
		for _, key := range p.removed {
			delete(d.current, key)
		}
		d.nextID = p.nextID
		d.order = p.order
	}
	if diff.empty() && !d.mirrorDirty {
		commit()
		return nil
	}
	if d.mirrorDirty {
		if err := d.resyncInactive(); err != nil {
			return fmt.Errorf("apply: %w; previous state still in force", err)
		}
	}
	standby := 1 - d.active
	if err := d.writeGeneration(standby, diff); err != nil {
		d.mirrorDirty = true
		return fmt.Errorf("apply: %w; previous state still in force", err)
	}
	if err := d.objs.SlActive.Put(uint32(0), serviceSlConfig{ActiveGen: standby}); err != nil {
		d.mirrorDirty = true
		return fmt.Errorf("apply: switch to generation %d: %w; previous state still in force", standby, err)
	}
	old := d.active
	d.active = standby
	commit()

	done := make(chan error, 1)
	d.mirror = done
	go func() {
		waitForReaders()
		done <- d.writeGeneration(old, diff)
	}()
	d.log.Debug("dataplane applied", "gen", standby, "services", len(d.current),
		"changed", diff.size())
	return nil
}

// waitMirror waits for a running update of the standby generation. If it
// failed, the standby generation is repaired before it is written again.
func (d *Dataplane) waitMirror() {
	if d.mirror == nil {
		return
	}
	if err := <-d.mirror; err != nil {
		d.mirrorDirty = true
		d.log.Warn("dataplane: could not update the standby generation; it is repaired on the next apply", "err", err)
	}
	d.mirror = nil
}

// writeGeneration applies diff to generation gen: deletions first, so a
// generation never holds more than max(old, new) entries.
func (d *Dataplane) writeGeneration(gen uint32, diff entriesDiff) error {
	if diff.empty() {
		return nil
	}
	d.written.Add(uint64(diff.size()))
	if err := deleteAll(d.objs.SlBackends, gen, diff.beDels); err != nil {
		return fmt.Errorf("delete backends: %w", err)
	}
	if err := deleteAll(d.objs.SlServices, gen, diff.svcDels); err != nil {
		return fmt.Errorf("delete services: %w", err)
	}
	if err := putAll(d.objs.SlBackends, gen, diff.beKeys, diff.beVals); err != nil {
		return fmt.Errorf("write backends: %w", err)
	}
	if err := putAll(d.objs.SlServices, gen, diff.svcKeys, diff.svcVals); err != nil {
		return fmt.Errorf("write services: %w", err)
	}
	return nil
}

// genKey is a map key with a generation field.
type genKey[K any] interface {
	*K
	gen() uint32
	setGen(uint32)
}

func (k *serviceSlSvcKey) gen() uint32     { return k.Gen }
func (k *serviceSlSvcKey) setGen(g uint32) { k.Gen = g }
func (k *serviceSlBeKey) gen() uint32      { return k.Gen }
func (k *serviceSlBeKey) setGen(g uint32)  { k.Gen = g }

func putAll[K any, V any, PK genKey[K]](m *ebpf.Map, gen uint32, keys []K, vals []V) error {
	if len(keys) == 0 {
		return nil
	}
	_, err := m.BatchUpdate(withGen[K, PK](keys, gen), vals, nil)
	return err
}

// withGen returns a copy of keys set to generation gen; the same diff is
// written to both generations.
func withGen[K any, PK genKey[K]](keys []K, gen uint32) []K {
	out := make([]K, len(keys))
	for i, k := range keys {
		PK(&k).setGen(gen)
		out[i] = k
	}
	return out
}

func deleteAll[K any, PK genKey[K]](m *ebpf.Map, gen uint32, dels []K) error {
	if len(dels) == 0 {
		return nil
	}
	_, err := m.BatchDelete(withGen[K, PK](dels, gen), nil)
	return err
}

// memberbarrierCmdGlobal is MEMBARRIER_CMD_GLOBAL, which waits for an RCU
// grace period (synchronize_rcu) on machines with more than one CPU.
const membarrierCmdGlobal = 1

// waitForReaders returns once every BPF program that may have read the
// previous active generation has finished. cgroup programs run inside an RCU
// read-side section, so a grace period is enough. Where membarrier cannot
// provide one (nohz_full, one CPU), a pause far longer than any program run
// stands in.
func waitForReaders() {
	if runtime.NumCPU() > 1 {
		if _, _, errno := unix.Syscall(unix.SYS_MEMBARRIER, membarrierCmdGlobal, 0, 0); errno == 0 {
			return
		}
	}
	time.Sleep(10 * time.Millisecond)
}

// Status reports what the dataplane has programmed. It waits for a running
// update of the standby generation, so its figures are settled.
func (d *Dataplane) Status() Status {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.waitMirror() // so EntriesWritten is settled
	st := Status{Generation: d.active, Services: len(d.current), EntriesWritten: d.written.Load()}
	for _, c := range d.current {
		st.Backends += len(c.set.Backends)
	}
	return st
}

// SetFlows turns the flow events (EventOpen, EventClose) of the node's
// programs on or off. They are off until turned on; the setting lives in
// the pinned maps, so it outlasts the process.
func (d *Dataplane) SetFlows(on bool) error {
	var cfg serviceSlNodeConfig
	if on {
		cfg.Flags |= 1 // SL_SET_FLOWS
	}
	if err := d.objs.SlSettings.Put(uint32(0), cfg); err != nil {
		return fmt.Errorf("set flow events: %w", err)
	}
	return nil
}

// FastPathSockets counts the sockets on the same-node fast path now.
func (d *Dataplane) FastPathSockets() (int, error) {
	var k serviceSlFastKey
	var cookie uint64
	n := 0
	it := d.objs.SlFast.Iterate()
	for it.Next(&k, &cookie) {
		n++
	}
	if err := it.Err(); err != nil {
		return n, fmt.Errorf("count fast-path sockets: %w", err)
	}
	return n, nil
}

// EntriesWritten is Status().EntriesWritten without waiting: it may not
// count yet the standby generation's update of the last Apply.
func (d *Dataplane) EntriesWritten() uint64 { return d.written.Load() }

// Stats reads the programs' counters.
func (d *Dataplane) Stats() (Stats, error) {
	var s Stats
	for _, f := range []struct {
		stat serviceSlStat
		v    *uint64
	}{
		{serviceSlStatSL_STAT_TRANSLATED, &s.Translated},
		{serviceSlStatSL_STAT_NO_BACKEND, &s.NoBackend},
		{serviceSlStatSL_STAT_BACKEND_MISS, &s.BackendMiss},
		{serviceSlStatSL_STAT_DENY_CONNECT, &s.DenyConnect},
		{serviceSlStatSL_STAT_DENY_INGRESS, &s.DenyIngress},
		{serviceSlStatSL_STAT_TAG_SENT, &s.TagSent},
		{serviceSlStatSL_STAT_TAG_TRUSTED, &s.TagTrusted},
		{serviceSlStatSL_STAT_TAG_REJECTED, &s.TagRejected},
		{serviceSlStatSL_STAT_UNTAGGED, &s.Untagged},
		{serviceSlStatSL_STAT_DROPPED, &s.Dropped},
		{serviceSlStatSL_STAT_VERDICT_MISS, &s.VerdictMiss},
		{serviceSlStatSL_STAT_EVENT_LOST, &s.EventsLost},
		{serviceSlStatSL_STAT_TERMINATED, &s.Terminated},
		{serviceSlStatSL_STAT_EARLY_DATA, &s.EarlyData},
		{serviceSlStatSL_STAT_FAST_REGISTERED, &s.FastRegistered},
		{serviceSlStatSL_STAT_FAST_FULL, &s.FastFull},
		{serviceSlStatSL_STAT_FAST_FALLBACK, &s.FastFallback},
		{serviceSlStatSL_STAT_FAST_BYTES, &s.FastBytes},
	} {
		v, err := d.readStat(f.stat)
		if err != nil {
			return s, err
		}
		*f.v = v
	}
	return s, nil
}

// Close releases the process's hold on the dataplane. Pins stay, so the
// programs stay attached and routing keeps working until another process
// adopts them or Teardown removes them.
func (d *Dataplane) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	d.waitMirror()
	d.release()
	return nil
}

// Teardown detaches every program and removes every pin and map of this
// dataplane, releases it, and checks with CheckRemoved that nothing is left.
func (d *Dataplane) Teardown() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return errors.New("teardown: dataplane is closed; use the package-level Teardown")
	}
	d.closed = true
	d.waitMirror()
	err := removePins(d.opts.PinDir)
	d.release()
	if err != nil {
		return err
	}
	if err := removeDir(d.opts.PinDir); err != nil {
		return err
	}
	return CheckRemoved(d.opts.PinDir, d.opts.Cgroup)
}

func (d *Dataplane) release() {
	if d.iter != nil {
		d.iter.Close()
		d.iter = nil
	}
	for _, l := range d.links {
		l.Close()
	}
	d.links = nil
	d.objs.Close()
	if d.lock != nil {
		d.lock.Close()
		d.lock = nil
	}
}

// Teardown removes the dataplane pinned under pinDir without loading it:
// links are unpinned (which detaches their programs once no process holds
// them) and maps are unpinned, then the directory is removed. It fails if
// another process holds the directory, and succeeds if nothing is there.
func Teardown(pinDir string) error {
	if _, err := os.Stat(pinDir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	lock, err := lockDir(pinDir)
	if err != nil {
		return err
	}
	err = removePins(pinDir)
	lock.Close()
	if err != nil {
		return err
	}
	return removeDir(pinDir)
}
