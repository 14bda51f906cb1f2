package xds

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math/rand/v2"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/sluice-mesh/sluice/dataplane/model"
	"github.com/sluice-mesh/sluice/xds/translate"
)

// Mode is the xDS protocol variant.
type Mode string

// Protocol variants.
const (
	ModeSotW  Mode = "sotw"  // State of the World: every response carries a type's full set
	ModeDelta Mode = "delta" // incremental: responses carry changes only
)

// ParseMode parses a --xds-mode value.
func ParseMode(s string) (Mode, error) {
	switch Mode(s) {
	case ModeSotW, ModeDelta:
		return Mode(s), nil
	}
	return "", fmt.Errorf("xds mode %q: want %q or %q", s, ModeSotW, ModeDelta)
}

// Applier receives each new desired state; the dataplane implements it. A
// returned error rejects the state, which the client NACKs.
type Applier interface {
	Apply(model.State) error
}

// NodeInfo identifies this agent to the control plane.
type NodeInfo struct {
	ID       string         // required: unique per agent
	Cluster  string         // optional: the mesh or cluster name
	Locality model.Locality // optional
	NodeName string         // optional: the host's name, sent as metadata node_name
	Version  string         // optional: agent version, sent as metadata agent_version
}

func (n NodeInfo) proto() *corev3.Node {
	md, _ := structpb.NewStruct(map[string]any{"node_name": n.NodeName, "agent_version": n.Version})
	node := &corev3.Node{
		Id:                   n.ID,
		Cluster:              n.Cluster,
		Metadata:             md,
		UserAgentName:        "sluice",
		UserAgentVersionType: &corev3.Node_UserAgentVersion{UserAgentVersion: n.Version},
	}
	if n.Locality != (model.Locality{}) {
		node.Locality = &corev3.Locality{Region: n.Locality.Region, Zone: n.Locality.Zone, SubZone: n.Locality.SubZone}
	}
	return node
}

// Options configures a Client.
type Options struct {
	Server         string        // required: gRPC target, e.g. "127.0.0.1:15010" or "unix:///run/sluice/xds.sock"
	Node           NodeInfo      // required: Node.ID
	Applier        Applier       // required
	Mode           Mode          // optional: ModeDelta by default
	TLS            *tls.Config   // optional: nil connects without TLS
	Logger         *slog.Logger  // optional: discards logs when nil
	BackoffInitial time.Duration // optional: first reconnect delay cap, default 250ms
	BackoffMax     time.Duration // optional: largest reconnect delay, default 30s
	WarmingTimeout time.Duration // optional: how long to wait for resources a listener needs before applying without them, default 15s
	// Keepalive is how long the connection may be silent before the
	// client pings the server to learn it is still there; DefaultKeepalive
	// when zero. A server refuses pings more frequent than its policy
	// allows by closing the connection ("too_many_pings"); gRPC servers
	// allow one per 5 minutes unless configured otherwise.
	Keepalive time.Duration

	// DialOptions are added to the client's own when it connects (for
	// example a gRPC stats handler); they must not set credentials.
	DialOptions []grpc.DialOption

	// CollectWhenIdle, if not zero, makes the client run the garbage
	// collector, and return the memory it frees to the kernel, once no
	// response has come for this long after the last, if the heap grew by
	// more than an eighth (and at least 2 MiB) since the last collection;
	// and once none has come for twenty times as long, if it grew by more
	// than 1 MiB. Each change allocates a little (at 10,000 services the
	// translation 133 KB, the dataplane's plan 83 KB); collecting while idle keeps the collections the runtime
	// would start anyway, with their pauses and assists, off the path of
	// the next change, and brings the process back to what the state needs
	// soon after changes stop. The agent uses IdleCollectAfter.
	CollectWhenIdle time.Duration
}

// DefaultKeepalive is Options.Keepalive's default: the most frequent ping
// a gRPC server's default policy accepts.
const DefaultKeepalive = 5 * time.Minute

// MinKeepalive is the shortest Options.Keepalive: gRPC raises shorter ones
// to it.
const MinKeepalive = 10 * time.Second

// IdleCollectAfter is the agent's Options.CollectWhenIdle: control planes
// send related changes within milliseconds of each other.
const IdleCollectAfter = 50 * time.Millisecond

// Client keeps the ADS stream and the last good state. Run drives it;
// Status may be called from any goroutine.
type Client struct {
	opts Options
	log  *slog.Logger
	node *corev3.Node

	// Owned by the goroutine running Run.
	accepted           resourceSet                // resources accepted (and applied unless warming), by type and name
	held               map[string]*update         // Delta: changes of NACKed responses the server will not resend, by type
	translator         *translate.Translator      // remembers the last translation, so the next costs what changed
	dirty              map[string]map[string]bool // names in which accepted differs from the translator's last accepted input, by type
	namesGen           map[string]uint64          // per named type: 1 + the generation of the set its names were computed from
	listenersRequested bool                       // listeners are subscribed on the current stream
	seen               map[string]bool            // types with an accepted response since start (initial sync)
	lastRejection      string                     // type and error of the last NACK, until a state is accepted
	appliedAccepted    bool                       // the Applier holds the translator's last accepted state
	acceptedState      model.State                // that state's services and peers (the translator's, valid while it is the last accepted)
	versions           map[string]string          // SotW: last accepted version_info per type
	subs               map[string][]string        // subscribed names of non-wildcard types, sorted
	subSet             map[string]map[string]bool // the same names as sets
	pending            bool                       // accepted resources not applied yet (warming)
	warmingSince       time.Time                  // when resources first went missing; zero if none
	warmTimer          *time.Timer                // fires when warming gives up
	reapply            chan struct{}              // Reapply was called

	collecting atomic.Bool // a collection started by collectIfGrown runs

	mu     sync.Mutex
	status Status // guarded by mu
}

// Status is what the client reports about itself.
type Status struct {
	Server    string
	Mode      Mode
	Connected bool // a stream is open
	// ConnectedSince is when Connected last changed; zero until the
	// first stream opens.
	ConnectedSince time.Time
	Applied        bool              // a state from the control plane is in force
	AppliedAt      time.Time         // when the last state was applied
	Versions       map[string]string // last accepted version per type (LDS, CDS, EDS, RDS)
	Resources      map[string]int    // accepted resources per type
	Services       int               // services in the applied state
	Warming        bool              // accepted resources wait for others before being applied
	Missing        []string          // resources listeners need that have not arrived
	Ignored        map[string]int    // fields set but not acted upon, per field path
	LastNACK       *NACK             // the last rejected response, if any
	NACKs          int               // responses rejected since start
	// CapacityNACKs counts the NACKs among NACKs whose state did not fit
	// the dataplane (errors.Is model.ErrCapacity): raising a capacity
	// fixes them, where the others need the control plane's input fixed.
	CapacityNACKs int
	Reconnects    int    // stream attempts after the first, failed ones included
	LastError     string // why the last stream ended
}

// NACK records a rejected response.
type NACK struct {
	Type    string // LDS, CDS, EDS or RDS
	Version string // the response's version (SotW version_info, Delta system_version_info); may be empty
	Nonce   string
	Error   string
	At      time.Time
}

// New checks opts and returns a client ready to Run.
func New(opts Options) (*Client, error) {
	switch {
	case opts.Server == "":
		return nil, errors.New("xds client: Server is required")
	case opts.Node.ID == "":
		return nil, errors.New("xds client: Node.ID is required")
	case opts.Applier == nil:
		return nil, errors.New("xds client: Applier is required")
	}
	if opts.Mode == "" {
		opts.Mode = ModeDelta
	}
	if _, err := ParseMode(string(opts.Mode)); err != nil {
		return nil, err
	}
	if opts.BackoffInitial <= 0 {
		opts.BackoffInitial = 250 * time.Millisecond
	}
	if opts.BackoffMax <= 0 {
		opts.BackoffMax = 30 * time.Second
	}
	if opts.Keepalive <= 0 {
		opts.Keepalive = DefaultKeepalive
	}
	if opts.Keepalive < MinKeepalive {
		return nil, fmt.Errorf("xds client: keepalive %v is shorter than gRPC's minimum of %v", opts.Keepalive, MinKeepalive)
	}
	if opts.WarmingTimeout <= 0 {
		opts.WarmingTimeout = 15 * time.Second
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	c := &Client{
		opts:       opts,
		log:        log.With("xds_server", opts.Server, "xds_mode", string(opts.Mode)),
		node:       opts.Node.proto(),
		accepted:   resourceSet{},
		held:       map[string]*update{},
		translator: translate.NewTranslator(),
		dirty:      map[string]map[string]bool{},
		namesGen:   map[string]uint64{},
		seen:       map[string]bool{},
		versions:   map[string]string{},
		subs:       map[string][]string{},
		subSet:     map[string]map[string]bool{},
		status:     Status{Server: opts.Server, Mode: opts.Mode},
		reapply:    make(chan struct{}, 1),
	}
	return c, nil
}

// Reapply asks Run to give the Applier the state it holds once more, soon,
// whether or not the control plane is reachable: for an Applier that adds
// to each state something that has changed since (the node's own
// workloads). It does not wait. Nothing happens if the Applier holds no
// state yet.
func (c *Client) Reapply() {
	select {
	case c.reapply <- struct{}{}:
	default:
	}
}

// reapplyNow is Reapply's work, done on Run's goroutine, where the state
// the Applier holds stays valid.
func (c *Client) reapplyNow() {
	if !c.appliedAccepted {
		return
	}
	if err := c.opts.Applier.Apply(model.State{Services: c.acceptedState.Services, Peers: c.acceptedState.Peers}); err != nil {
		c.log.Error("xds: the state could not be applied again; the Applier keeps what it had", "err", err)
	}
}

// Status returns a snapshot of the client's status.
func (c *Client) Status() Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.status
	s.Versions = maps.Clone(s.Versions)
	s.Resources = maps.Clone(s.Resources)
	s.Ignored = maps.Clone(s.Ignored)
	s.Missing = slices.Clone(s.Missing)
	if s.LastNACK != nil {
		n := *s.LastNACK
		s.LastNACK = &n
	}
	return s
}

func (c *Client) updateStatus(f func(*Status)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	f(&c.status)
}

// Run connects to the control plane and keeps the stream, reconnecting with
// capped exponential backoff and jitter, until ctx ends. The last good state
// stays applied whatever happens to the control plane. Run returns nil when
// ctx ends, or an error if the connection cannot be set up at all.
func (c *Client) Run(ctx context.Context) error {
	creds := insecure.NewCredentials()
	if c.opts.TLS != nil {
		creds = credentials.NewTLS(c.opts.TLS)
	}
	conn, err := grpc.NewClient(c.opts.Server, append([]grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		// A mesh's full state can be far larger than gRPC's default 4 MiB.
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxResponseSize)),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: c.opts.Keepalive, Timeout: 10 * time.Second}),
	}, c.opts.DialOptions...)...)
	if err != nil {
		return fmt.Errorf("xds client for %s: %w", c.opts.Server, err)
	}
	defer conn.Close()

	c.warmTimer = time.NewTimer(time.Hour)
	c.warmTimer.Stop()
	defer c.warmTimer.Stop()

	failures := 0
	for streams := 0; ; streams++ {
		if streams > 0 {
			c.updateStatus(func(s *Status) { s.Reconnects++ })
			// gRPC redials a lost server on its own schedule, up to 120 s
			// apart, and fails every stream opened meanwhile: the
			// client's backoff would be moot after a long outage. Dial
			// now, on the client's schedule.
			conn.ResetConnectBackoff()
		}
		progressed, err := c.runStream(ctx, conn)
		c.updateStatus(func(s *Status) {
			if s.Connected {
				s.Connected, s.ConnectedSince = false, time.Now()
			}
			if err != nil {
				s.LastError = err.Error()
			}
		})
		if ctx.Err() != nil {
			return nil
		}
		if progressed {
			failures = 0
		}
		delay := c.backoff(failures)
		// One warning per outage: the attempts that fail after it are
		// debug lines, and "xds stream established" ends it.
		level := slog.LevelWarn
		if failures > 0 {
			level = slog.LevelDebug
		}
		failures++
		c.log.Log(ctx, level, "xds stream ended; reconnecting", "err", err, "in", delay.Round(time.Millisecond), "attempt", failures)
		wait := time.NewTimer(delay)
		for waiting := true; waiting; {
			select {
			case <-ctx.Done():
				wait.Stop()
				return nil
			case <-c.reapply:
				c.reapplyNow()
			case <-wait.C:
				waiting = false
			}
		}
	}
}

// backoff returns a random delay up to BackoffInitial·2^failures, capped at
// BackoffMax ("full jitter"), so agents that lost the same control plane do
// not all come back at once.
func (c *Client) backoff(failures int) time.Duration {
	limit := c.opts.BackoffMax
	if failures < 30 {
		limit = min(limit, c.opts.BackoffInitial<<failures)
	}
	return time.Duration(rand.Int64N(int64(limit)) + 1)
}

// maxResponseSize bounds one xDS response: 10,000 services with 10
// endpoints each take about 4.5 MB.
const maxResponseSize = 512 << 20

type received struct {
	u   *update
	err error
}

// runStream runs one ADS stream until it fails or ctx ends. progressed
// reports whether the server answered at all, which resets the backoff.
func (c *Client) runStream(ctx context.Context, conn grpc.ClientConnInterface) (progressed bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	open := openDelta
	if c.opts.Mode == ModeSotW {
		open = openSotW
	}
	s, err := open(ctx, conn, c.node)
	if err != nil {
		return false, fmt.Errorf("open stream: %w", err)
	}
	// At start, listeners are requested once clusters are accepted and
	// their assignments subscribed, so no listener can arrive before the
	// clusters it names. The assignments are not waited for: the control
	// plane prepares the listeners while the client takes in the
	// assignments, and a listener whose assignments are still on their way
	// is held (warming) like any other. After that, and on every later
	// stream, everything at once.
	view := c.serverView()
	c.listenersRequested = c.seen[resourcev3.ListenerType]
	for _, t := range subscribedTypes {
		if t == resourcev3.ListenerType && !c.listenersRequested {
			continue
		}
		if err := s.subscribe(t, wildcardType(t), c.subs[t], view.names(t), c.versions[t]); err != nil {
			return false, fmt.Errorf("subscribe %s: %w", shortType(t), err)
		}
	}
	// A control plane without clusters may never answer for them.
	listenersDue := time.NewTimer(listenersAfter)
	defer listenersDue.Stop()
	idle, settled := time.NewTimer(time.Hour), time.NewTimer(time.Hour)
	idle.Stop()
	settled.Stop()
	defer idle.Stop()
	defer settled.Stop()
	c.updateStatus(func(st *Status) { st.Connected, st.ConnectedSince = true, time.Now() })

	recv := make(chan received)
	go func() {
		for {
			u, err := s.recv()
			select {
			case recv <- received{u, err}:
			case <-ctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()

	for {
		select {
		case <-ctx.Done():
			return progressed, ctx.Err()
		case <-c.warmTimer.C:
			c.finishWarming()
		case <-listenersDue.C:
			if err := c.requestListeners(s); err != nil {
				return progressed, err
			}
		case <-idle.C:
			c.collectIfGrown(false)
		case <-settled.C:
			c.collectIfGrown(true)
		case <-c.reapply:
			c.reapplyNow()
		case r := <-recv:
			if r.err != nil {
				return progressed, r.err
			}
			if !progressed {
				c.log.Info("xds stream established")
				progressed = true
			}
			if err := c.handle(s, r.u); err != nil {
				return progressed, err
			}
			if c.opts.CollectWhenIdle > 0 {
				idle.Reset(c.opts.CollectWhenIdle)
				settled.Reset(settleAfter * c.opts.CollectWhenIdle)
			}
		}
	}
}

// handle applies one response atomically: the accepted resources with the
// response's changes are translated and applied as a whole, or the response
// is NACKed and nothing changes. The returned error is a stream failure, not
// a rejection.
func (c *Client) handle(s stream, u *update) error {
	t := u.typeURL
	if !slices.Contains(subscribedTypes, t) {
		return c.reject(s, u, fmt.Errorf("unexpected type %s", t))
	}
	c.log.Debug("xds response", "type", shortType(t), "nonce", u.nonce, "version", u.version, "resources", len(u.raw), "removed", len(u.removed))
	if err := c.decode(u); err != nil {
		return c.reject(s, u, err)
	}
	c.filterSubscribed(u)
	c.supersedeHeld(u)
	undo := c.change(u)
	res, err := c.translateAndApply(c.initialSynced(t))
	if err != nil {
		undo()
		if c.opts.Mode == ModeDelta {
			c.hold(u)
		}
		return c.reject(s, u, err)
	}
	if err := s.ack(u, c.subs[t]); err != nil {
		return fmt.Errorf("ack %s: %w", shortType(t), err)
	}
	c.seen[t] = true
	c.versions[t] = u.version
	c.recordAccepted(res)
	c.retryHeld()
	if err := c.resubscribe(s); err != nil {
		return err
	}
	if c.seen[resourcev3.ClusterType] {
		return c.requestListeners(s)
	}
	return nil
}

// translateAndApply translates the accepted set, changed by c.change
// since the last translation, and applies the result. The translator is
// told exactly what changed, and accepts the translation only once it is
// applied (or, while warming, held for later): a state the Applier refuses
// leaves the translator as it was, like the accepted set once the caller
// undoes its changes.
//
// Resources come prepared for the translator as they are decoded (see
// decodeOne), so the client holds no decoded message, and once the
// translator has accepted a resource the client lets go of its preparation
// too: the translator keeps what it needs and, told every change, never
// asks for an unchanged resource again. A mesh's decoded messages would
// otherwise be most of the agent's memory.
func (c *Client) translateAndApply(synced bool) (translate.Result, error) {
	hint := translate.Hint{
		Listeners: slices.Collect(maps.Keys(c.dirty[resourcev3.ListenerType])),
		Clusters:  slices.Collect(maps.Keys(c.dirty[resourcev3.ClusterType])),
		Endpoints: slices.Collect(maps.Keys(c.dirty[resourcev3.EndpointType])),
		Routes:    slices.Collect(maps.Keys(c.dirty[resourcev3.RouteType])),
	}
	in, err := c.accepted.translateInput(c.dirty)
	if err != nil {
		return translate.Result{}, err
	}
	res, accept, err := c.translator.StagePrepared(in, hint)
	if err != nil {
		return res, err
	}
	applied, err := c.apply(res, synced)
	if err != nil {
		return res, err
	}
	accept()
	c.appliedAccepted, c.acceptedState = applied, model.State{Services: res.State.Services, Peers: res.State.Peers}
	for t, names := range c.dirty {
		for name := range names {
			c.accepted.release(t, name)
		}
	}
	clear(c.dirty)
	return res, nil
}

// change makes u's changes to the accepted set, marking the names in which
// it then differs from what the translator last accepted. undo reverts
// both. A resource the client got again unchanged (its message already let
// go of) is not a change.
func (c *Client) change(u *update) (undo func()) {
	t := u.typeURL
	marks := c.dirty[t]
	if marks == nil {
		marks = map[string]bool{}
		c.dirty[t] = marks
	}
	var marked []string
	mark := func(name string) {
		if !marks[name] {
			marks[name] = true
			marked = append(marked, name)
		}
	}
	for name, r := range u.upserts {
		if r.prep != nil {
			mark(name)
		}
	}
	for _, name := range u.removed {
		mark(name)
	}
	if ts := c.accepted[t]; u.full && ts != nil {
		for name := range ts.items {
			if _, ok := u.upserts[name]; !ok {
				mark(name)
			}
		}
	}
	undoSet := c.accepted.apply(u)
	return func() {
		undoSet()
		for _, name := range marked {
			delete(marks, name)
		}
	}
}

// initialSynced reports whether listeners and clusters will both have been
// accepted once if a response of type t is. Until then nothing is applied:
// a partial first state (clusters without listeners) would replace the
// state a restarted agent adopted with an empty one.
func (c *Client) initialSynced(t string) bool {
	has := func(typ string) bool { return c.seen[typ] || t == typ }
	return has(resourcev3.ListenerType) && has(resourcev3.ClusterType)
}

// apply gives a translated state to the Applier unless it must wait
// (initial sync or warming) or is what the Applier already has. It reports
// whether the Applier has the state when it returns.
//
// The Applier has it when it has the last accepted state and the
// translator found nothing changed: it then hands back the very services
// of that state. (The translator reuses the arrays of older states, so an
// older state cannot be kept to compare with.)
func (c *Client) apply(res translate.Result, synced bool) (bool, error) {
	now := time.Now()
	if !synced {
		c.pending = true
		return false, nil
	}
	// A state the Applier refuses is undone, and so is what it did to the
	// warming: a listener waiting for an assignment that came and was
	// refused waits on until its timeout, as if it had not come.
	pending, since := c.pending, c.warmingSince
	c.pending = c.warming(res, now)
	if c.pending {
		c.warmTimer.Reset(c.opts.WarmingTimeout - now.Sub(c.warmingSince))
		c.log.Debug("xds resources warming", "missing", res.Missing)
		return false, nil
	}
	c.warmTimer.Stop()
	if c.appliedAccepted && sameServices(c.acceptedState.Services, res.State.Services) && samePeers(c.acceptedState.Peers, res.State.Peers) {
		return true, nil
	}
	if err := c.opts.Applier.Apply(res.State); err != nil {
		c.pending, c.warmingSince = pending, since
		if pending && !since.IsZero() {
			c.warmTimer.Reset(c.opts.WarmingTimeout - now.Sub(since))
		}
		return false, err
	}
	c.log.Debug("xds state applied", "services", len(res.State.Services))
	return true, nil
}

// sameServices reports whether a and b are the same slice of services.
func sameServices(a, b []model.Service) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}

// samePeers reports whether a and b are the same slice of peers.
func samePeers(a, b []model.Peer) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}

// decode unpacks the resources of u. A resource the client already holds
// unchanged — same version (Delta) or same encoding (SotW, which resends
// everything) — keeps its message, so translation sees it as unchanged.
// Large responses are decoded on all cores.
func (c *Client) decode(u *update) error {
	if c.opts.Mode == ModeSotW {
		c.accepted.nameByHash(u.typeURL, [sha256.Size]byte{}) // build the index before sharing it
	}
	out := make([]decoded, len(u.raw))
	parallel(len(u.raw), func(lo, hi int) {
		var p translate.Preparer
		for i := lo; i < hi; i++ {
			out[i] = c.decodeOne(u, u.raw[i], &p)
		}
	})
	u.upserts = make(map[string]resource, len(u.raw))
	for _, d := range out {
		if d.err != nil {
			return d.err
		}
		u.upserts[d.name] = d.res
	}
	return nil
}

type decoded struct {
	name string
	res  resource
	err  error
}

// decodeOne decodes one resource of u and prepares it for translation
// with p; the decoded message is not kept. It only reads the client's
// state, so calls may run concurrently (each with its own Preparer).
func (c *Client) decodeOne(u *update, raw rawResource, p *translate.Preparer) decoded {
	t := u.typeURL
	if raw.name != "" {
		if err := checkName(t, raw.name); err != nil {
			return decoded{err: err}
		}
		if prev, ok := c.held[t].get(raw.name); ok && prev.version == raw.version {
			return decoded{name: raw.name, res: prev}
		}
		if prev, ok := c.accepted.get(t, raw.name); ok && raw.version != "" && prev.version == raw.version {
			return decoded{name: raw.name, res: prev}
		}
	}
	var sum *[sha256.Size]byte
	if c.opts.Mode == ModeSotW {
		h := sha256.Sum256(raw.any.GetValue())
		sum = &h
		if name, ok := c.accepted.nameByHash(t, h); ok && raw.any.GetTypeUrl() == t {
			prev, _ := c.accepted.get(t, name)
			prev.version = u.version
			return decoded{name: name, res: prev}
		}
	}
	version := raw.version
	if raw.name == "" {
		version = u.version
	}
	// Most assignments are prepared straight from their encoding; the
	// others are decoded, as is every other resource.
	if t == resourcev3.EndpointType && raw.any.GetTypeUrl() == t {
		if name, prep, ok := p.AssignmentWire(raw.any.GetValue()); ok {
			if err := checkName(t, name); err != nil {
				return decoded{err: err}
			}
			if raw.name != "" && name != raw.name {
				return decoded{err: fmt.Errorf("%s resource sent as %q is named %q", shortType(t), raw.name, name)}
			}
			return decoded{name: name, res: resource{version: version, sum: sum, prep: prep}}
		}
	}
	name, msg, err := decode(t, raw.any)
	if err != nil {
		if raw.name != "" {
			name = raw.name
		}
		return decoded{err: fmt.Errorf("%s resource %q: %w", shortType(t), name, err)}
	}
	if err := checkName(t, name); err != nil {
		return decoded{err: err}
	}
	if raw.name != "" && name != raw.name {
		return decoded{err: fmt.Errorf("%s resource sent as %q is named %q", shortType(t), raw.name, name)}
	}
	return decoded{name: name, res: resource{version: version, sum: sum, prep: prepare(p, name, msg)}}
}

// prepare prepares a decoded resource for translation.
func prepare(p *translate.Preparer, name string, msg proto.Message) *translate.Prepared {
	switch m := msg.(type) {
	case *listenerv3.Listener:
		return p.Listener(name, m)
	case *clusterv3.Cluster:
		return p.Cluster(name, m)
	case *endpointv3.ClusterLoadAssignment:
		return p.Assignment(name, m)
	case *routev3.RouteConfiguration:
		return p.Route(name, m)
	}
	return nil
}

// parallel runs work over [0, n) in one chunk per core when n is large.
func parallel(n int, work func(lo, hi int)) {
	workers := runtime.GOMAXPROCS(0)
	if n < 256 || workers < 2 {
		work(0, n)
		return
	}
	var wg sync.WaitGroup
	chunk := (n + workers - 1) / workers
	for lo := 0; lo < n; lo += chunk {
		hi := min(lo+chunk, n)
		wg.Add(1)
		go func() {
			defer wg.Done()
			work(lo, hi)
		}()
	}
	wg.Wait()
}

// filterSubscribed drops resources of named types that are not (or no
// longer) subscribed, as Envoy ignores them.
func (c *Client) filterSubscribed(u *update) {
	if wildcardType(u.typeURL) {
		return
	}
	for name := range u.upserts {
		if !c.subSet[u.typeURL][name] {
			delete(u.upserts, name)
		}
	}
}

// hold keeps the changes of a NACKed Delta response: the server will not
// send them again, so they are retried once later responses make them
// applicable (typically when the offending resource is fixed or removed).
func (c *Client) hold(u *update) {
	h := c.held[u.typeURL]
	if h == nil {
		h = &update{typeURL: u.typeURL, upserts: map[string]resource{}}
		c.held[u.typeURL] = h
	}
	for name, r := range u.upserts {
		if r.prep == nil {
			// Got again as accepted: nothing to retry.
			continue
		}
		h.upserts[name] = r
		h.removed = slices.DeleteFunc(h.removed, func(n string) bool { return n == name })
	}
	for _, name := range u.removed {
		delete(h.upserts, name)
		if !slices.Contains(h.removed, name) {
			h.removed = append(h.removed, name)
		}
	}
}

// get returns a held upsert; it is safe on a nil update.
func (u *update) get(name string) (resource, bool) {
	if u == nil {
		return resource{}, false
	}
	r, ok := u.upserts[name]
	return r, ok
}

// supersedeHeld forgets held changes to resources that u changes again.
func (c *Client) supersedeHeld(u *update) {
	h := c.held[u.typeURL]
	if h == nil {
		return
	}
	if u.full {
		delete(c.held, u.typeURL)
		return
	}
	changed := make(map[string]bool, len(u.upserts)+len(u.removed))
	for name := range u.upserts {
		changed[name] = true
	}
	for _, name := range u.removed {
		changed[name] = true
	}
	for name := range changed {
		delete(h.upserts, name)
	}
	h.removed = slices.DeleteFunc(h.removed, func(n string) bool { return changed[n] })
	if len(h.upserts) == 0 && len(h.removed) == 0 {
		delete(c.held, u.typeURL)
	}
}

// retryHeld applies the held changes of every type together if they have
// become acceptable.
func (c *Client) retryHeld() {
	if len(c.held) == 0 {
		return
	}
	var undos []func()
	for _, t := range subscribedTypes {
		if h := c.held[t]; h != nil {
			undos = append(undos, c.change(h))
		}
	}
	res, err := c.translateAndApply(c.initialSynced(""))
	if err != nil {
		for i := len(undos) - 1; i >= 0; i-- {
			undos[i]()
		}
		c.log.Debug("xds: held changes still not applicable", "err", err, "held", len(c.held))
		return
	}
	c.log.Info("xds: changes of an earlier rejected response are now applied")
	clear(c.held)
	c.recordAccepted(res)
}

// serverView is what the server believes this client holds: the accepted
// resources and the held ones.
func (c *Client) serverView() resourceSet {
	v := c.accepted
	for _, h := range c.held {
		v = v.with(h)
	}
	return v
}

// warming reports whether applying should wait while resources that
// listeners need are missing, for at most WarmingTimeout, after which the
// state is applied without them.
func (c *Client) warming(res translate.Result, now time.Time) bool {
	if len(res.Missing) == 0 {
		c.warmingSince = time.Time{}
		return false
	}
	if c.warmingSince.IsZero() {
		c.warmingSince = now
	}
	return now.Sub(c.warmingSince) < c.opts.WarmingTimeout
}

// reject NACKs u, keeping the previous state.
func (c *Client) reject(s stream, u *update, reason error) error {
	t := u.typeURL
	reason = clip(reason)
	// A SotW server sends a rejected response again as soon as it is
	// NACKed: the same refusal is logged once, its repeats at debug.
	level, key := slog.LevelError, shortType(t)+"\x00"+reason.Error()
	if key == c.lastRejection {
		level = slog.LevelDebug
	}
	c.lastRejection = key
	c.log.Log(context.Background(), level, "xds response rejected; previous state kept", "type", shortType(t), "nonce", u.nonce, "err", reason)
	c.updateStatus(func(st *Status) {
		st.NACKs++
		if errors.Is(reason, model.ErrCapacity) {
			st.CapacityNACKs++
		}
		st.LastNACK = &NACK{Type: shortType(t), Version: u.version, Nonce: u.nonce, Error: reason.Error(), At: time.Now()}
	})
	if err := s.nack(u, c.subs[t], c.versions[t], reason); err != nil {
		return fmt.Errorf("nack %s: %w", shortType(t), err)
	}
	return nil
}

// finishWarming applies the accepted resources although some a listener
// needs never arrived: services using them refuse connections until they do.
func (c *Client) finishWarming() {
	if !c.pending || !c.initialSynced("") {
		return
	}
	res, err := c.translateAndApply(true)
	if err != nil {
		c.log.Error("xds: applying after warming timeout failed; previous state kept", "err", err)
		return
	}
	c.recordAccepted(res)
	c.log.Warn("xds: applied without resources that never arrived", "missing", res.Missing, "waited", c.opts.WarmingTimeout)
}

func (c *Client) recordAccepted(res translate.Result) {
	c.lastRejection = ""
	applied, now := !c.pending, time.Now()
	c.updateStatus(func(st *Status) {
		st.Versions = map[string]string{}
		for t, v := range c.versions {
			st.Versions[shortType(t)] = v
		}
		st.Resources = map[string]int{}
		for t := range c.accepted {
			st.Resources[shortType(t)] = c.accepted.count(t)
		}
		st.Warming = !applied
		st.Missing = res.Missing
		if applied {
			st.Applied = true
			st.AppliedAt = now
			st.Services = len(res.State.Services)
			st.Ignored = res.Ignored
		}
	})
}

// listenersAfter bounds how long listeners wait for clusters at start.
const listenersAfter = time.Second

// requestListeners subscribes to listeners if that has not happened on
// this stream yet.
func (c *Client) requestListeners(s stream) error {
	if c.listenersRequested {
		return nil
	}
	c.listenersRequested = true
	t := resourcev3.ListenerType
	if err := s.subscribe(t, true, nil, c.serverView().names(t), c.versions[t]); err != nil {
		return fmt.Errorf("subscribe %s: %w", shortType(t), err)
	}
	return nil
}

// resubscribe follows the clusters and listeners: assignments are
// subscribed by the names EDS clusters use, route configurations by the
// names listeners use. Resources no longer subscribed are dropped.
func (c *Client) resubscribe(s stream) error {
	// Assignment names follow the clusters, route names the listeners;
	// they are recomputed only when those changed.
	from := map[string]string{resourcev3.EndpointType: resourcev3.ClusterType, resourcev3.RouteType: resourcev3.ListenerType}
	for _, t := range []string{resourcev3.EndpointType, resourcev3.RouteType} {
		src := c.accepted[from[t]]
		if src == nil || c.namesGen[t] == src.gen+1 {
			continue
		}
		c.namesGen[t] = src.gen + 1 // +1: zero means never computed
		var names []string
		if t == resourcev3.EndpointType {
			names = c.translator.EDSNames()
		} else {
			names = c.translator.RDSNames()
		}
		have := c.subs[t]
		if slices.Equal(have, names) {
			continue
		}
		added, removed := setDiff(have, names)
		var err error
		if len(have) == 0 {
			err = s.subscribe(t, false, names, c.accepted.names(t), c.versions[t])
		} else {
			err = s.resubscribe(t, names, added, removed)
		}
		if err != nil {
			return fmt.Errorf("subscribe %s: %w", shortType(t), err)
		}
		c.subs[t] = names
		c.subSet[t] = make(map[string]bool, len(names))
		for _, name := range names {
			c.subSet[t][name] = true
		}
		if len(removed) > 0 {
			dropped := &update{typeURL: t, removed: removed}
			c.change(dropped)
		}
	}
	return nil
}

// setDiff returns what is in b and not in a, and what is in a and not in b.
func setDiff(a, b []string) (added, removed []string) {
	inA := make(map[string]bool, len(a))
	for _, x := range a {
		inA[x] = true
	}
	inB := make(map[string]bool, len(b))
	for _, x := range b {
		inB[x] = true
		if !inA[x] {
			added = append(added, x)
		}
	}
	for _, x := range a {
		if !inB[x] {
			removed = append(removed, x)
		}
	}
	return added, removed
}
