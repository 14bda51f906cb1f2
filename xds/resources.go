package xds

import (
	"crypto/sha256"
	"fmt"
	"maps"
	"strings"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/sluice-mesh/sluice/xds/translate"
)

// Type URLs the client subscribes to, in the order Envoy requests them:
// clusters before the listeners that use them, assignments after clusters.
var subscribedTypes = []string{
	resourcev3.ClusterType,
	resourcev3.EndpointType,
	resourcev3.ListenerType,
	resourcev3.RouteType,
}

// wildcardType reports whether a type is subscribed as a whole (Envoy does
// so for listeners and clusters) rather than by name.
func wildcardType(typeURL string) bool {
	return typeURL == resourcev3.ListenerType || typeURL == resourcev3.ClusterType
}

// shortType names a type URL in logs and errors.
func shortType(typeURL string) string {
	switch typeURL {
	case resourcev3.ListenerType:
		return "LDS"
	case resourcev3.ClusterType:
		return "CDS"
	case resourcev3.EndpointType:
		return "EDS"
	case resourcev3.RouteType:
		return "RDS"
	}
	return typeURL
}

// MaxNameLength is the longest resource name the client accepts. Names are
// identifiers: a listener's becomes its service's name, which every flow
// record, log line and metric series of the service carries. Kubernetes
// names a service port in under 300 bytes. A longer name is refused, so a
// control plane gone wrong cannot make each of them carry megabytes.
const MaxNameLength = 1024

// checkName refuses a name longer than MaxNameLength, quoting only its
// start.
func checkName(typeURL, name string) error {
	if len(name) <= MaxNameLength {
		return nil
	}
	return fmt.Errorf("%s resource %q...: the name has %d bytes, at most %d are accepted",
		shortType(typeURL), name[:64], len(name), MaxNameLength)
}

// maxNACKError bounds the error a NACK reports (to the control plane, in
// the log and in the status): errors quote what they refuse, which a
// control plane controls.
const maxNACKError = 4096

// clipped is an error whose text is cut to maxNACKError bytes; errors.Is
// and errors.As still see the error it cuts.
type clipped struct {
	err error
	msg string
}

func (e *clipped) Error() string { return e.msg }
func (e *clipped) Unwrap() error { return e.err }

// clip returns err with its text cut to maxNACKError bytes, saying how
// long it was.
func clip(err error) error {
	msg := err.Error()
	if len(msg) <= maxNACKError {
		return err
	}
	return &clipped{err: err, msg: fmt.Sprintf("%s... (%d bytes in all)", strings.ToValidUTF8(msg[:maxNACKError], ""), len(msg))}
}

// resource is one decoded resource with the version the server gave it
// (Delta) or the version of the response that carried it (SotW), and the
// hash of its encoding, prepared for translation (the decoded message is
// not kept). prep is nil once the translator has accepted it (see
// Client.translateAndApply).
type resource struct {
	version string
	sum     *[sha256.Size]byte // SotW only
	prep    *translate.Prepared
}

// typeSet holds the resources of one type by name, with an index by hash
// kept in step as it changes.
type typeSet struct {
	items  map[string]resource
	gen    uint64                       // changes with every change of items
	byHash map[[sha256.Size]byte]string // encoding hash → name, built on first use
}

func (ts *typeSet) put(name string, r resource) {
	if old, ok := ts.items[name]; ok {
		ts.unindex(name, old)
	}
	ts.items[name] = r
	if ts.byHash != nil && r.sum != nil {
		ts.byHash[*r.sum] = name
	}
}

func (ts *typeSet) unindex(name string, old resource) {
	if ts.byHash != nil && old.sum != nil && ts.byHash[*old.sum] == name {
		delete(ts.byHash, *old.sum)
	}
}

func (ts *typeSet) del(name string) {
	old, ok := ts.items[name]
	if !ok {
		return
	}
	ts.unindex(name, old)
	delete(ts.items, name)
}

// resourceSet holds resources by type URL.
type resourceSet map[string]*typeSet

// apply makes u's changes in place and returns what undoes them. Its cost
// follows the size of u, except for a response that replaces a whole type.
func (s resourceSet) apply(u *update) (undo func()) {
	t := u.typeURL
	old := s[t]
	if u.full || old == nil {
		ts := &typeSet{items: make(map[string]resource, len(u.upserts))}
		for name, r := range u.upserts {
			ts.items[name] = r
		}
		if old != nil {
			ts.gen = old.gen + 1
		}
		s[t] = ts
		return func() {
			if old == nil {
				delete(s, t)
			} else {
				s[t] = old
			}
		}
	}
	type saved struct {
		name string
		r    resource
		had  bool
	}
	var log []saved
	for name, r := range u.upserts {
		prev, had := old.items[name]
		log = append(log, saved{name, prev, had})
		old.put(name, r)
	}
	for _, name := range u.removed {
		if prev, had := old.items[name]; had {
			log = append(log, saved{name, prev, true})
			old.del(name)
		}
	}
	old.gen++
	return func() {
		for i := len(log) - 1; i >= 0; i-- {
			if log[i].had {
				old.put(log[i].name, log[i].r)
			} else {
				old.del(log[i].name)
			}
		}
		old.gen++
	}
}

// with returns a copy of s with u's changes, leaving s as it is.
func (s resourceSet) with(u *update) resourceSet {
	out := make(resourceSet, len(s))
	for t, ts := range s {
		if t == u.typeURL {
			ts = &typeSet{items: maps.Clone(ts.items), gen: ts.gen}
		}
		out[t] = ts
	}
	out.apply(u)
	return out
}

// release lets go of the message of a held resource: the translator has
// accepted it.
func (s resourceSet) release(typeURL, name string) {
	ts := s[typeURL]
	if ts == nil {
		return
	}
	if r, ok := ts.items[name]; ok && r.prep != nil {
		r.prep = nil
		ts.items[name] = r
	}
}

func (s resourceSet) get(typeURL, name string) (resource, bool) {
	ts := s[typeURL]
	if ts == nil {
		return resource{}, false
	}
	r, ok := ts.items[name]
	return r, ok
}

// names returns the names held for a type with their versions.
func (s resourceSet) names(typeURL string) map[string]string {
	ts := s[typeURL]
	if ts == nil {
		return nil
	}
	out := make(map[string]string, len(ts.items))
	for name, r := range ts.items {
		out[name] = r.version
	}
	return out
}

func (s resourceSet) count(typeURL string) int {
	if ts := s[typeURL]; ts != nil {
		return len(ts.items)
	}
	return 0
}

// nameByHash finds a held resource by the hash of its encoding.
func (s resourceSet) nameByHash(typeURL string, sum [sha256.Size]byte) (string, bool) {
	ts := s[typeURL]
	if ts == nil {
		return "", false
	}
	if ts.byHash == nil {
		ts.byHash = make(map[[sha256.Size]byte]string, len(ts.items))
		for name, r := range ts.items {
			if r.sum != nil {
				ts.byHash[*r.sum] = name
			}
		}
	}
	name, ok := ts.byHash[sum]
	return name, ok
}

// translateInput returns the prepared resources of the names in dirty (by
// type): those a translator told of exactly these names needs. A name not
// held is left out, which tells it is gone. A held one must still have its
// preparation: it is let go of only once the translator has it.
func (s resourceSet) translateInput(dirty map[string]map[string]bool) (translate.PreparedResources, error) {
	var err error
	prepared := func(typeURL string) map[string]*translate.Prepared {
		m := make(map[string]*translate.Prepared, len(dirty[typeURL]))
		for name := range dirty[typeURL] {
			r, ok := s.get(typeURL, name)
			switch {
			case !ok:
			case r.prep == nil:
				err = fmt.Errorf("internal error: %s resource %q changed but its translation is gone", shortType(typeURL), name)
			default:
				m[name] = r.prep
			}
		}
		return m
	}
	in := translate.PreparedResources{
		Listeners: prepared(resourcev3.ListenerType),
		Clusters:  prepared(resourcev3.ClusterType),
		Endpoints: prepared(resourcev3.EndpointType),
		Routes:    prepared(resourcev3.RouteType),
	}
	return in, err
}

// decode unpacks one resource of the expected type and returns its name.
func decode(typeURL string, a *anypb.Any) (string, proto.Message, error) {
	if a == nil {
		return "", nil, fmt.Errorf("empty resource")
	}
	if a.GetTypeUrl() != typeURL {
		return "", nil, fmt.Errorf("resource of type %s in a %s response", a.GetTypeUrl(), shortType(typeURL))
	}
	var msg interface {
		proto.Message
		GetName() string
	}
	switch typeURL {
	case resourcev3.ListenerType:
		msg = &listenerv3.Listener{}
	case resourcev3.ClusterType:
		msg = &clusterv3.Cluster{}
	case resourcev3.RouteType:
		msg = &routev3.RouteConfiguration{}
	case resourcev3.EndpointType:
		cla := &endpointv3.ClusterLoadAssignment{}
		if err := a.UnmarshalTo(cla); err != nil {
			return "", nil, fmt.Errorf("decode: %w", err)
		}
		return cla.GetClusterName(), cla, nil
	default:
		return "", nil, fmt.Errorf("unexpected type %s", typeURL)
	}
	if err := a.UnmarshalTo(msg); err != nil {
		return "", nil, fmt.Errorf("decode: %w", err)
	}
	return msg.GetName(), msg, nil
}
