package translate

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	xdscorev3 "github.com/cncf/xds/go/xds/core/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	httpinspectorv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/http_inspector/v3"
	originaldstv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_dst/v3"
	tlsinspectorv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	udpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/udp/udp_proxy/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/sluice-mesh/sluice/dataplane/model"
)

// Filter types, by the full name of their typed_config message. Filters are
// told apart by type, never by their free-form name.
const (
	typeTCPProxy = "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
	typeHCM      = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
	typeRBAC     = "envoy.extensions.filters.network.rbac.v3.RBAC"
	typeUDPProxy = "envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig"
	typeUDPRoute = "envoy.extensions.filters.udp.udp_proxy.v3.Route"
)

// harmlessListenerFilters are the listener filters a TCP listener may carry:
// they only inspect the first bytes or the original destination to choose a
// filter chain, and with one filter chain there is nothing to choose. The
// value makes a message to check that the config decodes.
var harmlessListenerFilters = map[string]func() proto.Message{
	"envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector":   func() proto.Message { return &tlsinspectorv3.TlsInspector{} },
	"envoy.extensions.filters.listener.http_inspector.v3.HttpInspector": func() proto.Message { return &httpinspectorv3.HttpInspector{} },
	"envoy.extensions.filters.listener.original_dst.v3.OriginalDst":     func() proto.Message { return &originaldstv3.OriginalDst{} },
}

// listenerPlan is what a listener asks for, before clusters are resolved.
type listenerPlan struct {
	name  string
	addrs []netip.AddrPort // the main address first, then additional_addresses in order
	pools []pool           // L4: the tcp_proxy's or udp_proxy's clusters
	l7    *l7Plan          // an HTTP connection manager: an L7 service, without pools
	// policies are the RBAC filters' policies in filter order, nil if
	// none. Every service of the listener shares the slice.
	policies []model.Policy
	proto    model.Protocol
	weighted bool           // pools are weighted_clusters (Splits), not one cluster (Endpoints)
	fastPath model.FastPath // from the service metadata
}

// pool is one cluster a listener sends connections to.
type pool struct {
	cluster string
	weight  uint32
}

// typeName returns the message name of an Any's type URL: the part after
// the last '/', whatever the host before it.
func typeName(a *anypb.Any) string {
	u := a.GetTypeUrl()
	return u[strings.LastIndexByte(u, '/')+1:]
}

// typeLabel is a type name as errors show it: bare when it is a well-formed
// message name, quoted otherwise (empty, or whatever a broken control plane
// put there).
func typeLabel(name string) string {
	if protoreflect.FullName(name).IsValid() {
		return name
	}
	return strconv.Quote(name)
}

// unpack decodes a typed_config into m. Errors are relative to the Any.
func unpack(a *anypb.Any, m proto.Message) *fieldError {
	if err := proto.Unmarshal(a.GetValue(), m); err != nil {
		return errAt("", "cannot decode %s: %v", typeLabel(typeName(a)), err)
	}
	return nil
}

func (t *tally) listener(name string, l *listenerv3.Listener) (*listenerPlan, *fieldError) {
	if l == nil {
		return nil, errAt("", "nil resource")
	}
	if err := t.check(l.ProtoReflect(), listenerPolicy); err != nil {
		return nil, err
	}
	if err := nameMatches(l.GetName(), name); err != nil {
		return nil, err
	}
	if l.GetAddress() == nil {
		return nil, errAt("address", "missing; a service listener needs its VIP:port")
	}
	main, proto, err := t.vip(l.GetAddress(), listenerAddressPolicy, listenerSocketPolicy)
	if err != nil {
		return nil, err.in("address")
	}
	p := &listenerPlan{name: name, proto: proto, addrs: make([]netip.AddrPort, 1, 1+len(l.GetAdditionalAddresses()))}
	p.addrs[0] = main
	if md := l.GetMetadata(); md != nil {
		if p.fastPath, err = t.serviceMetadata(md); err != nil {
			return nil, err.in("metadata")
		}
		if p.fastPath != model.FastPathUnset && proto == model.UDP {
			return nil, errAt(fmt.Sprintf("metadata.filter_metadata[%q][\"fast_path\"]", serviceKey), "set on a UDP listener; the fast path carries TCP only")
		}
	}
	for i, aa := range l.GetAdditionalAddresses() {
		ap, err := t.additionalAddress(aa, proto)
		if err != nil {
			return nil, err.in(index("additional_addresses", i))
		}
		p.addrs = append(p.addrs, ap)
	}
	if proto == model.UDP {
		err = t.udpListener(l, p)
	} else {
		err = t.tcpListener(l, p)
	}
	if err != nil {
		return nil, err
	}
	return p, nil
}

// serviceKey is the filter_metadata key under which a listener's metadata
// holds Sluice's settings of the service.
const serviceKey = "sluice.io/service"

// serviceMetadata reads a listener's service metadata: fast_path, a bool
// (docs/fastpath.md). Unknown keys are refused, as in the workload
// metadata: a misspelt key would otherwise silently do nothing.
func (t *tally) serviceMetadata(md *corev3.Metadata) (model.FastPath, *fieldError) {
	if err := t.check(md.ProtoReflect(), listenerMetadataPolicy); err != nil {
		return model.FastPathUnset, err
	}
	fm := md.GetFilterMetadata()
	s, ok := fm[serviceKey]
	if len(fm) > 1 || len(fm) == 1 && !ok {
		t.add("Listener.metadata.filter_metadata")
	}
	if !ok {
		return model.FastPathUnset, nil
	}
	at := fmt.Sprintf("filter_metadata[%q]", serviceKey)
	fast := model.FastPathUnset
	for k, v := range s.GetFields() {
		if k != "fast_path" {
			return model.FastPathUnset, errAt(fmt.Sprintf("%s[%q]", at, k), "unknown key; the only key is fast_path")
		}
		b, ok := v.GetKind().(*structpb.Value_BoolValue)
		if !ok {
			return model.FastPathUnset, errAt(at+`["fast_path"]`, "want a bool, got %s", kindName(v))
		}
		fast = model.FastPathOff
		if b.BoolValue {
			fast = model.FastPathOn
		}
	}
	return fast, nil
}

// nameMatches refuses a resource whose name field differs from the name it
// is held under: one of the two would be wrong in every error and record.
func nameMatches(field, key string) *fieldError {
	switch {
	case key == "" && field == "":
		return errAt("name", "empty")
	case field != key:
		return errAt("name", "%q differs from the resource name %q", field, key)
	}
	return nil
}

func (t *tally) additionalAddress(aa *listenerv3.AdditionalAddress, want model.Protocol) (netip.AddrPort, *fieldError) {
	if aa == nil {
		return netip.AddrPort{}, errAt("", "missing")
	}
	if err := t.check(aa.ProtoReflect(), additionalAddressPolicy); err != nil {
		return netip.AddrPort{}, err
	}
	if aa.GetAddress() == nil {
		return netip.AddrPort{}, errAt("address", "missing")
	}
	ap, proto, err := t.vip(aa.GetAddress(), extraAddressPolicy, extraSocketPolicy)
	if err != nil {
		return netip.AddrPort{}, err.in("address")
	}
	if proto != want {
		return netip.AddrPort{}, errAt("address.socket_address.protocol",
			"%s differs from the main address's %s; one listener is one service", proto, want)
	}
	return ap, nil
}

func (t *tally) tcpListener(l *listenerv3.Listener, p *listenerPlan) *fieldError {
	for i, lf := range l.GetListenerFilters() {
		if err := t.harmlessListenerFilter(lf); err != nil {
			return err.in(index("listener_filters", i))
		}
	}
	chains := l.GetFilterChains()
	if len(chains) != 1 {
		return errAt("filter_chains", "a TCP listener needs exactly one filter chain, got %d", len(chains))
	}
	fc := chains[0]
	if err := t.filterChain(fc, p); err != nil {
		return err.in("filter_chains[0]")
	}
	return nil
}

// listenerFilterConfig checks a listener filter's own fields and returns
// its typed_config, by whose type Sluice knows the filter.
func (t *tally) listenerFilterConfig(lf *listenerv3.ListenerFilter) (*anypb.Any, *fieldError) {
	if lf == nil {
		return nil, errAt("", "missing")
	}
	if err := t.check(lf.ProtoReflect(), listenerFilterPolicy); err != nil {
		return nil, err
	}
	tc := lf.GetTypedConfig()
	if tc == nil {
		return nil, errAt("typed_config", "missing; Sluice identifies listener filters by the type of typed_config")
	}
	return tc, nil
}

func (t *tally) harmlessListenerFilter(lf *listenerv3.ListenerFilter) *fieldError {
	tc, err := t.listenerFilterConfig(lf)
	if err != nil {
		return err
	}
	name := typeName(tc)
	newMsg, ok := harmlessListenerFilters[name]
	if !ok {
		return errAt("", "unsupported listener filter type %s; %s", typeLabel(name), reasonConnectTime)
	}
	if err := unpack(tc, newMsg()); err != nil {
		return err.in("typed_config")
	}
	t.add("Listener.listener_filters=" + name)
	return nil
}

func (t *tally) filterChain(fc *listenerv3.FilterChain, p *listenerPlan) *fieldError {
	if fc == nil {
		return errAt("", "missing")
	}
	if err := t.check(fc.ProtoReflect(), filterChainPolicy); err != nil {
		return err
	}
	if m := fc.GetFilterChainMatch(); !isEmpty(m.ProtoReflect()) {
		return errAt("filter_chain_match", "filter chain matching is not supported; %s", reasonConnectTime)
	}
	// Any number of RBAC filters, then a tcp_proxy (an L4 service) or an
	// http_connection_manager (an L7 service), which are terminal: Envoy
	// refuses a chain in which a filter follows one.
	filters := fc.GetFilters()
	terminal, last := -1, ""
	for i, f := range filters {
		kind, err := t.networkFilter(f, i, p)
		if err != nil {
			return err.in(index("filters", i))
		}
		if terminal >= 0 {
			return errAt(index("filters", i), "follows %s (filters[%d]), a terminal filter, which must be the last of the chain", last, terminal)
		}
		if kind != "" {
			terminal, last = i, kind
		}
	}
	switch {
	case len(filters) == 0:
		return errAt("filters", "empty; want a tcp_proxy or an http_connection_manager, after any RBAC filters")
	case terminal < 0:
		return errAt("filters", "no tcp_proxy or http_connection_manager; the chain must end with one, after any RBAC filters")
	}
	return nil
}

// networkFilter accepts a terminal filter, tcp_proxy or
// http_connection_manager, whose translation it puts in p and whose kind it
// returns, and an RBAC filter, whose policy it adds to p; it refuses every
// other kind, naming the type. i is the filter's index in its chain.
func (t *tally) networkFilter(f *listenerv3.Filter, i int, p *listenerPlan) (string, *fieldError) {
	if f == nil {
		return "", errAt("", "missing")
	}
	if err := t.check(f.ProtoReflect(), filterPolicy); err != nil {
		return "", err
	}
	tc := f.GetTypedConfig()
	if tc == nil {
		return "", errAt("typed_config", "missing; Sluice identifies filters by the type of typed_config")
	}
	switch name := typeName(tc); name {
	case typeTCPProxy:
		tp := &tcpproxyv3.TcpProxy{}
		if err := unpack(tc, tp); err != nil {
			return "", err.in("typed_config")
		}
		if err := t.tcpProxy(tp, p); err != nil {
			return "", err.in("typed_config")
		}
		return "tcp_proxy", nil
	case typeHCM:
		h := &hcmv3.HttpConnectionManager{}
		if err := unpack(tc, h); err != nil {
			return "", err.in("typed_config")
		}
		if err := t.httpConnectionManager(h, p); err != nil {
			return "", err.in("typed_config")
		}
		return "http_connection_manager", nil
	case typeRBAC:
		cfg := &rbacv3.RBAC{}
		if err := unpack(tc, cfg); err != nil {
			return "", err.in("typed_config")
		}
		pol, ok, err := t.rbacFilter(cfg, f.GetName(), i)
		if err != nil {
			return "", err.in("typed_config")
		}
		if ok {
			p.policies = append(p.policies, pol)
		}
		return "", nil
	default:
		return "", errAt("", "unsupported filter type %s", typeLabel(name))
	}
}

func (t *tally) tcpProxy(tp *tcpproxyv3.TcpProxy, p *listenerPlan) *fieldError {
	if err := t.check(tp.ProtoReflect(), tcpProxyPolicy); err != nil {
		return err
	}
	switch spec := tp.GetClusterSpecifier().(type) {
	case *tcpproxyv3.TcpProxy_Cluster:
		if spec.Cluster == "" {
			return errAt("cluster", "empty cluster name")
		}
		if err := notDirectory(spec.Cluster); err != nil {
			return err.in("cluster")
		}
		p.pools = []pool{{cluster: spec.Cluster, weight: 1}}
		return nil
	case *tcpproxyv3.TcpProxy_WeightedClusters:
		pools, err := t.weightedClusters(spec.WeightedClusters)
		if err != nil {
			return err.in("weighted_clusters")
		}
		p.pools, p.weighted = pools, true
		return nil
	}
	return errAt("cluster", "missing; set cluster or weighted_clusters")
}

func (t *tally) weightedClusters(wc *tcpproxyv3.TcpProxy_WeightedCluster) ([]pool, *fieldError) {
	if err := t.check(wc.ProtoReflect(), weightedClusterPolicy); err != nil {
		return nil, err
	}
	cws := wc.GetClusters()
	if len(cws) == 0 {
		return nil, errAt("clusters", "empty")
	}
	pools := make([]pool, 0, len(cws))
	for i, cw := range cws {
		if cw == nil {
			return nil, errAt(index("clusters", i), "missing")
		}
		if err := t.check(cw.ProtoReflect(), clusterWeightPolicy); err != nil {
			return nil, err.in(index("clusters", i))
		}
		// Each cluster is one pool (a model Split), named after it.
		if err := splitName(cw.GetName(), i, func(j int) string { return pools[j].cluster }); err != nil {
			return nil, err
		}
		pools = append(pools, pool{cluster: cw.GetName(), weight: cw.GetWeight()})
	}
	return pools, nil
}

// splitName checks the name of the i-th cluster of a weighted split, the
// names of the clusters before it being prior(0) … prior(i-1).
func splitName(name string, i int, prior func(j int) string) *fieldError {
	field := index("clusters", i) + ".name"
	if name == "" {
		return errAt(field, "empty cluster name")
	}
	if err := notDirectory(name); err != nil {
		return err.in(field)
	}
	for j := range i {
		if prior(j) == name {
			return errAt(field, "cluster %q is listed twice (also clusters[%d])", name, j)
		}
	}
	return nil
}

func (t *tally) udpListener(l *listenerv3.Listener, p *listenerPlan) *fieldError {
	if n := len(l.GetFilterChains()); n > 0 {
		if err := noRBAC(l.GetFilterChains()); err != nil {
			return err
		}
		return errAt("filter_chains", "a UDP listener takes no filter chains (got %d); put udp_proxy in listener_filters", n)
	}
	lfs := l.GetListenerFilters()
	for i, lf := range lfs {
		if err := t.udpListenerFilter(lf, p); err != nil {
			return err.in(index("listener_filters", i))
		}
	}
	if len(lfs) != 1 {
		return errAt("listener_filters", "a UDP listener needs exactly one listener filter (udp_proxy), got %d", len(lfs))
	}
	return nil
}

const reasonRBACUDP = "RBAC is enforced on TCP services only"

// noRBAC refuses an RBAC filter in the filter chains of a UDP listener with
// the reason a UDP service cannot have one, rather than the filter chain's.
func noRBAC(chains []*listenerv3.FilterChain) *fieldError {
	for i, fc := range chains {
		for j, f := range fc.GetFilters() {
			if typeName(f.GetTypedConfig()) == typeRBAC {
				return errAt(fmt.Sprintf("filter_chains[%d].filters[%d]", i, j), "%s: %s", typeRBAC, reasonRBACUDP)
			}
		}
	}
	return nil
}

func (t *tally) udpListenerFilter(lf *listenerv3.ListenerFilter, p *listenerPlan) *fieldError {
	tc, err := t.listenerFilterConfig(lf)
	if err != nil {
		return err
	}
	switch name := typeName(tc); name {
	case typeUDPProxy:
	case typeRBAC:
		return errAt("", "%s: %s", name, reasonRBACUDP)
	default:
		return errAt("", "unsupported listener filter type %s on a UDP listener; want %s", typeLabel(name), typeUDPProxy)
	}
	cfg := &udpproxyv3.UdpProxyConfig{}
	if err := unpack(tc, cfg); err != nil {
		return err.in("typed_config")
	}
	cluster, err := t.udpProxy(cfg)
	if err != nil {
		return err.in("typed_config")
	}
	if err := notDirectory(cluster); err != nil {
		return err.in("typed_config")
	}
	p.pools = []pool{{cluster: cluster, weight: 1}}
	return nil
}

// udpProxy returns the one cluster a udp_proxy sends to: its deprecated
// cluster field, or a matcher that does nothing but name a default route.
func (t *tally) udpProxy(cfg *udpproxyv3.UdpProxyConfig) (string, *fieldError) {
	if err := t.check(cfg.ProtoReflect(), udpProxyPolicy); err != nil {
		return "", err
	}
	switch spec := cfg.GetRouteSpecifier().(type) {
	case *udpproxyv3.UdpProxyConfig_Cluster:
		if spec.Cluster == "" {
			return "", errAt("cluster", "empty cluster name")
		}
		return spec.Cluster, nil
	case *udpproxyv3.UdpProxyConfig_Matcher:
		c, err := t.udpMatcher(spec)
		if err != nil {
			return "", err.in("matcher")
		}
		return c, nil
	}
	return "", errAt("matcher", "missing; set matcher.on_no_match or cluster")
}

func (t *tally) udpMatcher(spec *udpproxyv3.UdpProxyConfig_Matcher) (string, *fieldError) {
	m := spec.Matcher
	if err := t.check(m.ProtoReflect(), udpMatcherPolicy); err != nil {
		return "", err
	}
	onm := m.GetOnNoMatch()
	if onm == nil {
		return "", errAt("on_no_match", "missing; Sluice needs the route every session takes")
	}
	if err := t.check(onm.ProtoReflect(), udpOnMatchPolicy); err != nil {
		return "", err.in("on_no_match")
	}
	act := onm.GetAction()
	if act == nil {
		return "", errAt("on_no_match.action", "missing")
	}
	c, err := t.udpAction(act)
	if err != nil {
		return "", err.in("on_no_match.action")
	}
	return c, nil
}

func (t *tally) udpAction(act *xdscorev3.TypedExtensionConfig) (string, *fieldError) {
	if err := t.check(act.ProtoReflect(), udpActionPolicy); err != nil {
		return "", err
	}
	tc := act.GetTypedConfig()
	if tc == nil {
		return "", errAt("typed_config", "missing")
	}
	if name := typeName(tc); name != typeUDPRoute {
		return "", errAt("typed_config", "unsupported action type %s; want %s", typeLabel(name), typeUDPRoute)
	}
	r := &udpproxyv3.Route{}
	if err := unpack(tc, r); err != nil {
		return "", err.in("typed_config")
	}
	if err := t.check(r.ProtoReflect(), udpRoutePolicy); err != nil {
		return "", err.in("typed_config")
	}
	if r.GetCluster() == "" {
		return "", errAt("typed_config.cluster", "empty cluster name")
	}
	return r.GetCluster(), nil
}

// routeConfigNames appends the RDS route names of l's HTTP connection
// managers to names. Undecodable configs are skipped: Translate reports them.
func routeConfigNames(l *listenerv3.Listener, names []string) []string {
	chains := l.GetFilterChains()
	if dc := l.GetDefaultFilterChain(); dc != nil {
		chains = append(chains[:len(chains):len(chains)], dc)
	}
	for _, fc := range chains {
		for _, f := range fc.GetFilters() {
			tc := f.GetTypedConfig()
			if tc == nil || typeName(tc) != typeHCM {
				continue
			}
			hcm := &hcmv3.HttpConnectionManager{}
			if proto.Unmarshal(tc.GetValue(), hcm) != nil {
				continue
			}
			if n := hcm.GetRds().GetRouteConfigName(); n != "" {
				names = append(names, n)
			}
		}
	}
	return names
}
