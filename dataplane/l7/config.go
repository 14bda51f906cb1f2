package l7

import (
	"errors"
	"fmt"
	"net/http"
	"net/netip"

	"github.com/sluice-mesh/sluice/dataplane/model"
)

// ErrInvalidConfig classifies the errors of NewConfig: the services do not
// make a consistent L7 configuration.
var ErrInvalidConfig = errors.New("invalid L7 configuration")

// Origin is what the dataplane knows of a redirected connection.
type Origin struct {
	Service  netip.AddrPort // the VIP:port the client dialed
	Client   netip.AddrPort // the client's address
	Identity uint32         // the client's numeric identity; 0 unknown
}

// Config is one complete L7 configuration. It is replaced as a whole
// (Proxy.SetConfig) and must not be changed once in use.
type Config struct {
	Services   map[netip.AddrPort]*Service // by VIP:port
	Identities map[uint32]string           // numeric identity → SPIFFE ID, for records and authorization
}

// Service is an L7 service as the proxy serves it.
type Service struct {
	Name   string
	L7     *model.L7
	Router *Router // required; NewConfig builds it
	// Authorize decides whether a request may proceed; nil allows every
	// request. It is called concurrently and must not block for long.
	Authorize func(r *http.Request, o Origin) Verdict
}

// Verdict is an authorization decision and who made it, for the request
// record. ShadowDenied says that the dry-run rules (shadow rules, LOG
// policies) would have denied the request, by ShadowPolicy's ShadowRule.
type Verdict struct {
	Allowed      bool
	Policy, Rule string

	ShadowDenied             bool
	ShadowPolicy, ShadowRule string
}

// NewConfig builds the L7 configuration of services: those with L7 set,
// keyed by VIP:port. It checks that every cluster a route names is one of
// the service's L7.Clusters, and that each cluster's upstream protocol is
// one the proxy knows (a newer agent's may not be). Errors wrap
// ErrInvalidConfig and name the service, route and cluster.
func NewConfig(services []model.Service, identities map[uint32]string) (*Config, error) {
	c := &Config{Services: map[netip.AddrPort]*Service{}, Identities: identities}
	for i := range services {
		s := &services[i]
		if s.L7 == nil {
			continue
		}
		label := model.Label(i, s)
		if s.Protocol != model.TCP {
			return nil, configErr("%s: an L7 service must be TCP", label)
		}
		if s.L7.Routes == nil {
			return nil, configErr("%s: L7 without routes", label)
		}
		key := netip.AddrPortFrom(s.VIP.Unmap(), s.Port)
		if prev, ok := c.Services[key]; ok {
			return nil, configErr("%s: %s is also the address of service %q", label, key, prev.Name)
		}
		clusters := make(map[string]bool, len(s.L7.Clusters))
		for _, cl := range s.L7.Clusters {
			if cl.Protocol > model.UpstreamUseDownstream {
				return nil, configErr("%s: cluster %q: unknown upstream protocol %s", label, cl.Name, cl.Protocol)
			}
			clusters[cl.Name] = true
		}
		for _, vh := range s.L7.Routes.VirtualHosts {
			for j, rt := range vh.Routes {
				for _, wc := range rt.Action.Clusters {
					if !clusters[wc.Name] {
						return nil, configErr("%s: virtual host %q route %s: cluster %q is not one of the service's clusters",
							label, vh.Name, routeLabel(j, &rt), wc.Name)
					}
				}
			}
		}
		svc := &Service{Name: s.Name, L7: s.L7, Router: NewRouter(s.L7.Routes)}
		if len(s.L7.Policies) > 0 {
			svc.Authorize = authorizeBy(NewAuthorizer(s.L7.Policies, func(id uint32) string { return identities[id] }))
		}
		c.Services[key] = svc
	}
	return c, nil
}

// authorizeBy decides a request by the service's HTTP policies: from the
// client's address and identity, to the VIP:port it dialed.
func authorizeBy(a *Authorizer) func(*http.Request, Origin) Verdict {
	return func(r *http.Request, o Origin) Verdict {
		d := a.Authorize(r, o.Client, o.Service, o.Identity)
		v := Verdict{Allowed: d.Allowed, Policy: d.Policy, Rule: d.Rule}
		if d.Shadow == ShadowDeny {
			v.ShadowDenied, v.ShadowPolicy, v.ShadowRule = true, d.ShadowPolicy, d.ShadowRule
		}
		return v
	}
}

func routeLabel(i int, rt *model.HTTPRoute) string {
	if rt.Name == "" {
		return fmt.Sprintf("#%d", i)
	}
	return fmt.Sprintf("%q", rt.Name)
}

// cluster returns the service's cluster name, or nil.
func (s *Service) cluster(name string) *model.Cluster {
	for i := range s.L7.Clusters {
		if s.L7.Clusters[i].Name == name {
			return &s.L7.Clusters[i]
		}
	}
	return nil
}

type configError struct{ msg string }

func (e *configError) Error() string { return e.msg }
func (e *configError) Unwrap() error { return ErrInvalidConfig }

func configErr(format string, args ...any) error {
	return &configError{fmt.Sprintf(format, args...)}
}
