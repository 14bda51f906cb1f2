package l7

import (
	"cmp"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"

	"github.com/sluice-mesh/sluice/dataplane/model"
)

// Router selects routes from one model.HTTPRoutes. It is immutable and
// safe for concurrent use; a new configuration gets a new Router.
type Router struct {
	routes *model.HTTPRoutes
	exact  map[string]int // domain → virtual host
	suffix []wildcard     // "*.example.com" as ".example.com", longest first
	prefix []wildcard     // "example.*" as "example.", longest first
	any    int            // the virtual host of "*", -1 if none
}

type wildcard struct {
	part string
	host int
}

// NewRouter indexes routes for selection.
func NewRouter(routes *model.HTTPRoutes) *Router {
	rt := &Router{routes: routes, exact: map[string]int{}, any: -1}
	for i, vh := range routes.VirtualHosts {
		for _, d := range vh.Domains {
			switch {
			case d == "*":
				rt.any = i
			case strings.HasPrefix(d, "*"):
				rt.suffix = append(rt.suffix, wildcard{d[1:], i})
			case strings.HasSuffix(d, "*"):
				rt.prefix = append(rt.prefix, wildcard{d[:len(d)-1], i})
			default:
				rt.exact[d] = i
			}
		}
	}
	longestFirst := func(a, b wildcard) int { return cmp.Compare(len(b.part), len(a.part)) }
	slices.SortStableFunc(rt.suffix, longestFirst)
	slices.SortStableFunc(rt.prefix, longestFirst)
	return rt
}

// VirtualHost returns the virtual host for a request's authority, nil if
// none matches.
func (rt *Router) VirtualHost(authority string) *model.VirtualHost {
	host := strings.ToLower(authority)
	if rt.routes.IgnorePort {
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
	}
	if i, ok := rt.exact[host]; ok {
		return &rt.routes.VirtualHosts[i]
	}
	for _, w := range rt.suffix {
		// A wildcard stands for at least one character.
		if len(host) > len(w.part) && strings.HasSuffix(host, w.part) {
			return &rt.routes.VirtualHosts[w.host]
		}
	}
	for _, w := range rt.prefix {
		if len(host) > len(w.part) && strings.HasPrefix(host, w.part) {
			return &rt.routes.VirtualHosts[w.host]
		}
	}
	if rt.any >= 0 {
		return &rt.routes.VirtualHosts[rt.any]
	}
	return nil
}

// Route returns the route r takes: the first route of its virtual host
// whose match holds, nil if there is none.
func (rt *Router) Route(r *http.Request) *model.HTTPRoute {
	vh := rt.VirtualHost(r.Host)
	if vh == nil {
		return nil
	}
	path := r.URL.EscapedPath()
	for i := range vh.Routes {
		if Matches(&vh.Routes[i].Match, r, path) {
			return &vh.Routes[i]
		}
	}
	return nil
}

// Matches reports whether m holds for r, whose path (escaped, without the
// query) is path.
func Matches(m *model.HTTPMatch, r *http.Request, path string) bool {
	if !pathMatches(m, path) {
		return false
	}
	for i := range m.Headers {
		if !headerMatches(&m.Headers[i], r) {
			return false
		}
	}
	if len(m.Query) > 0 {
		q := r.URL.Query()
		for _, qm := range m.Query {
			vs, ok := q[qm.Name]
			switch {
			case !ok:
				return false
			case qm.Present:
			case len(vs) == 0 || !qm.Value.Match(vs[0]):
				return false
			}
		}
	}
	return true
}

func pathMatches(m *model.HTTPMatch, path string) bool {
	switch m.PathKind {
	case model.PathExact:
		if m.CaseSensitive {
			return path == m.Path
		}
		return strings.EqualFold(path, m.Path)
	case model.PathRegex:
		return m.PathRegex != nil && m.PathRegex.MatchString(path)
	}
	if len(path) < len(m.Path) {
		return false
	}
	if m.CaseSensitive {
		return strings.HasPrefix(path, m.Path)
	}
	return strings.EqualFold(path[:len(m.Path)], m.Path)
}

// header returns the value of a header or pseudo-header of r, several
// values joined by commas, and whether r has it.
func header(r *http.Request, name string) (string, bool) {
	switch name {
	case ":method":
		return r.Method, true
	case ":authority":
		return r.Host, true
	case ":path":
		return r.URL.RequestURI(), true
	case ":scheme":
		if r.TLS != nil {
			return "https", true
		}
		return "http", true
	}
	vs := r.Header.Values(name)
	if len(vs) == 0 {
		return "", false
	}
	return strings.Join(vs, ","), true
}

func headerMatches(h *model.HeaderMatch, r *http.Request) bool {
	v, ok := header(r, h.Name)
	var hit bool
	switch {
	case h.Present:
		hit = ok
	case !ok:
		// A missing header matches nothing, inverted or not.
		return false
	default:
		hit = h.Value.Match(v)
	}
	return hit != h.Invert
}

// Pick returns the cluster a request goes to: clusters[i] with probability
// weight/sum, n being a uniformly random number.
func Pick(clusters []model.WeightedCluster, n uint64) string {
	if len(clusters) == 1 {
		return clusters[0].Name
	}
	var sum uint64
	for _, c := range clusters {
		sum += uint64(c.Weight)
	}
	if sum == 0 {
		return ""
	}
	n %= sum
	for _, c := range clusters {
		if n < uint64(c.Weight) {
			return c.Name
		}
		n -= uint64(c.Weight)
	}
	return clusters[len(clusters)-1].Name
}

// PickEndpoint chooses the endpoint of a try among endpoints: a usable one
// (Health.Usable) of the best priority (the lowest number) that has any,
// with probability proportional to its weight (0 counts as 1); n is
// uniformly random. Endpoints in avoid (those a request already tried) are
// chosen only when the priority has no other. It reports false if no
// endpoint is usable.
func PickEndpoint(endpoints []model.Endpoint, avoid []netip.AddrPort, n uint64) (netip.AddrPort, bool) {
	best, found := uint32(0), false
	for i := range endpoints {
		if e := &endpoints[i]; e.Health.Usable() && (!found || e.Priority < best) {
			best, found = e.Priority, true
		}
	}
	if !found {
		return netip.AddrPort{}, false
	}
	addr := func(e *model.Endpoint) netip.AddrPort { return netip.AddrPortFrom(e.Addr, e.Port) }
	weight := func(e *model.Endpoint) uint64 { return max(uint64(e.Weight), 1) }
	for _, avoiding := range []bool{len(avoid) > 0, false} {
		eligible := func(e *model.Endpoint) bool {
			if !e.Health.Usable() || e.Priority != best {
				return false
			}
			if avoiding {
				for _, a := range avoid {
					if a == addr(e) {
						return false
					}
				}
			}
			return true
		}
		var sum uint64
		for i := range endpoints {
			if eligible(&endpoints[i]) {
				sum += weight(&endpoints[i])
			}
		}
		if sum == 0 {
			continue
		}
		k := n % sum
		for i := range endpoints {
			if e := &endpoints[i]; eligible(e) {
				if k < weight(e) {
					return addr(e), true
				}
				k -= weight(e)
			}
		}
	}
	panic(fmt.Sprintf("l7: no endpoint chosen among %d", len(endpoints)))
}

// Rewrite returns the path a request is sent upstream with: path with the
// route's matched prefix replaced by its PrefixRewrite, if it has one.
func Rewrite(route *model.HTTPRoute, path string) string {
	m, a := &route.Match, &route.Action
	if a.PrefixRewrite == "" || m.PathKind != model.PathPrefix || len(path) < len(m.Path) {
		return path
	}
	return a.PrefixRewrite + path[len(m.Path):]
}

// EditHeaders applies the route's header changes to h: removals first,
// then additions.
func EditHeaders(a *model.HTTPAction, h http.Header) {
	for _, name := range a.RemoveHeaders {
		h.Del(name)
	}
	for _, hv := range a.AddHeaders {
		if hv.Append {
			h.Add(hv.Name, hv.Value)
		} else {
			h.Set(hv.Name, hv.Value)
		}
	}
}
