package sockops

import (
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sluice-mesh/sluice/dataplane"
	"github.com/sluice-mesh/sluice/dataplane/l7"
	"github.com/sluice-mesh/sluice/dataplane/model"
	"github.com/sluice-mesh/sluice/dataplane/policy"
	"github.com/sluice-mesh/sluice/identity"
	"github.com/sluice-mesh/sluice/sockops/flow"
)

// Enricher turns the dataplane's events into flow records: it names the
// workloads at both ends, the service the client dialed and the node. It
// is safe for concurrent use. SetState is cheap (it keeps references);
// the lookup tables are built on the first event after a change, on the
// events' goroutine, not on the path that applies state.
type Enricher struct {
	node   string
	toWall func(mono time.Duration) time.Time

	mu sync.Mutex
	// Guarded by mu.
	services  []model.Service     // a copy of the slice; the services are shared, never modified
	workloads []identity.Workload // replaced, never modified
	idx       *index              // nil when stale
}

// NewEnricher returns an Enricher for the node named node. toWall converts
// an event's CLOCK_MONOTONIC time to wall time.
func NewEnricher(node string, toWall func(time.Duration) time.Time) *Enricher {
	return &Enricher{node: node, toWall: toWall}
}

// SetState gives the services in force and the workloads the agent was
// told of besides endpoints. It copies the services slice, not the
// services (their contents are never modified once applied).
func (e *Enricher) SetState(services []model.Service, workloads []identity.Workload) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.services = slices.Clone(services)
	e.workloads = workloads
	e.idx = nil
}

// who a workload address is.
type peer struct {
	workload, namespace, identity string
}

type index struct {
	peers    map[netip.Addr]peer
	vips     map[netip.AddrPort]string // TCP service VIP:port → service
	backends map[netip.AddrPort]string // endpoint → its service, "" if several
}

func (e *Enricher) index() *index {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.idx != nil {
		return e.idx
	}
	idx := &index{peers: map[netip.Addr]peer{}, vips: map[netip.AddrPort]string{}, backends: map[netip.AddrPort]string{}}
	for _, w := range e.workloads {
		for _, a := range w.Addrs {
			idx.peers[a] = peer{w.Name, w.Namespace, w.SPIFFEID}
		}
	}
	for i := range e.services {
		s := &e.services[i]
		if s.Protocol != model.TCP {
			continue
		}
		name := serviceName(s.Name)
		idx.vips[netip.AddrPortFrom(s.VIP, s.Port)] = name
		// names the workloads at eps' addresses; the first name wins.
		names := func(eps []model.Endpoint) {
			for _, ep := range eps {
				if w := ep.Workload; w != nil {
					if _, ok := idx.peers[ep.Addr]; !ok {
						idx.peers[ep.Addr] = peer{w.Name, w.Namespace, w.SPIFFEID}
					}
				}
			}
		}
		add := func(eps []model.Endpoint) {
			for _, ep := range eps {
				k := netip.AddrPortFrom(ep.Addr, ep.Port)
				if prev, ok := idx.backends[k]; ok && prev != name {
					idx.backends[k] = ""
				} else {
					idx.backends[k] = name
				}
			}
			names(eps)
		}
		add(s.Endpoints)
		for _, sp := range s.Splits {
			add(sp.Endpoints)
		}
		if s.L7 != nil {
			// The upstreams of the node's L7 proxy: who the endpoint of a
			// request record is.
			for _, c := range s.L7.Clusters {
				names(c.Endpoints)
			}
		}
	}
	e.idx = idx
	return idx
}

// Flow makes the flow record of a dataplane event.
func (e *Enricher) Flow(ev dataplane.Event) flow.Flow {
	idx := e.index()
	f := flow.Flow{
		Time:     e.toWall(ev.Time),
		Node:     e.node,
		Protocol: "tcp",
		Reporter: flow.ReporterSource,
		Verdict:  flow.VerdictAllowed,
		Source:   idx.peer(ev.Source),
		// The policy destination is the backend the client got.
		Destination: idx.peer(ev.Destination),
	}
	if ev.SPIFFEID != "" {
		f.Source.Identity = ev.SPIFFEID
	}
	switch ev.Kind {
	case dataplane.EventOpen, dataplane.EventClose:
		f.Event = flow.EventOpen
		if ev.Kind == dataplane.EventClose {
			f.Event = flow.EventClose
			f.BytesSent, f.BytesRecv = ev.BytesSent, ev.BytesRecv
			f.Duration = ev.Duration
		}
		if ev.Server {
			f.Reporter = flow.ReporterDestination
		}
		f.RTT, f.Retransmits, f.FastPath = ev.RTT, ev.Retransmits, ev.FastPath
	case dataplane.EventDenyConnect, dataplane.EventDenyIngress:
		f.Event, f.Verdict, f.Reason = flow.EventDeny, flow.VerdictDenied, "policy"
		f.Policy = ruleName(ev.Rule)
	case dataplane.EventShadowDenyConnect, dataplane.EventShadowDenyIngress:
		f.Event, f.Verdict, f.Reason = flow.EventDeny, flow.VerdictAudit, "policy (dry run)"
		f.Policy = ruleName(ev.ShadowRule)
	case dataplane.EventTerminated:
		f.Event, f.Verdict, f.Reason = flow.EventTerminate, flow.VerdictDenied, "policy changed"
		f.Policy = ruleName(ev.Rule)
	}
	if ev.Kind == dataplane.EventDenyIngress || ev.Kind == dataplane.EventShadowDenyIngress || ev.Kind == dataplane.EventTerminated {
		f.Reporter = flow.ReporterDestination
	}
	if ev.Service.IsValid() {
		f.Service = &flow.Service{Name: idx.vips[ev.Service], VIP: ev.Service}
	} else if name := idx.backends[ev.Destination]; name != "" {
		f.Service = &flow.Service{Name: name}
	}
	return f
}

// Request makes the flow record of a request the node's L7 proxy served
// (flow.EventRequest, reporter flow.ReporterProxy): the source is the
// client, named by its address and the identity the proxy knew it by;
// the service is the L7 service; the destination is the endpoint of the
// request's last try. A request authorization denied is verdict denied,
// reason "http-policy", with the deciding "<policy>#<rule>"; one only
// dry-run rules would have denied is verdict audit, reason "http-policy
// (dry run)".
func (e *Enricher) Request(r l7.WireRecord) flow.Flow {
	idx := e.index()
	f := flow.Flow{
		Time:        r.Start.Add(r.Duration),
		Node:        e.node,
		Event:       flow.EventRequest,
		Reporter:    flow.ReporterProxy,
		Verdict:     flow.VerdictAllowed,
		Protocol:    "http",
		Source:      idx.peer(unmap(r.Client)),
		Destination: idx.peer(unmap(r.Upstream)),
		Duration:    r.Duration,
		HTTP: &flow.HTTP{
			Method: r.Method, Path: r.Path, PathTruncated: r.PathTruncated, Authority: r.Authority,
			Protocol: r.Proto, Code: r.Code, GRPCStatus: r.GRPCStatus, Route: r.Route, Cluster: r.Cluster, Tries: r.Tries, Error: r.Error,
		},
	}
	if r.GRPC {
		f.Protocol = "grpc"
	}
	if r.ClientID != "" {
		f.Source.Identity = r.ClientID
	}
	if vip := unmap(r.Service); vip.IsValid() || r.ServiceName != "" {
		f.Service = &flow.Service{Name: serviceName(r.ServiceName), VIP: vip}
		if f.Service.Name == "" {
			f.Service.Name = idx.vips[vip]
		}
	}
	if d := r.Denied; d != nil {
		f.Verdict, f.Reason = flow.VerdictDenied, "http-policy"
		f.Policy = ruleName(policy.Rule{Policy: d.Policy, Rule: d.Rule, Default: d.Rule == ""})
	} else if a := r.Audit; a != nil {
		f.Verdict, f.Reason = flow.VerdictAudit, "http-policy (dry run)"
		f.Policy = ruleName(policy.Rule{Policy: a.Policy, Rule: a.Rule, Default: a.Rule == ""})
	}
	return f
}

func unmap(a netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
}

func (idx *index) peer(a netip.AddrPort) flow.Peer {
	p := idx.peers[a.Addr()]
	return flow.Peer{Workload: p.workload, Namespace: p.namespace, Identity: p.identity, Address: a}
}

// serviceName is the name flow records give a service: its listener's
// name without the port it may end with ("shop/web:80" is "shop/web"),
// since records carry the VIP:port apart.
func serviceName(listener string) string {
	i := strings.LastIndexByte(listener, ':')
	if i <= 0 || i == len(listener)-1 {
		return listener
	}
	for _, c := range listener[i+1:] {
		if c < '0' || c > '9' {
			return listener
		}
	}
	return listener[:i]
}

// ruleName names a rule as flow records do: "<policy>#<rule>", with
// "default" for the rule set's default.
func ruleName(r policy.Rule) string {
	switch {
	case r.Policy == "":
		return ""
	case r.Default:
		return r.Policy + "#default"
	}
	return r.Policy + "#" + r.Rule
}
