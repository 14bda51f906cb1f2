package xds

import (
	"context"
	"slices"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/anypb"
)

// update is one response of either protocol. The client decodes raw into
// upserts, reusing the messages of resources it already holds unchanged.
type update struct {
	typeURL string
	nonce   string
	version string // SotW version_info; Delta system_version_info
	full    bool   // the response replaces every resource of its type
	raw     []rawResource
	upserts map[string]resource // by name
	removed []string
}

// rawResource is a resource as received.
type rawResource struct {
	name    string // Delta only; SotW names are inside the resource
	version string // Delta only
	any     *anypb.Any
}

// stream is one ADS stream in either protocol. Its methods are called from
// one goroutine, except recv, which has a goroutine of its own.
type stream interface {
	// subscribe opens the subscription for a type: all of it (wildcard) or
	// names. known are the resources already held, with their versions, so
	// an unchanged server has nothing to send.
	subscribe(typeURL string, wildcard bool, names []string, known map[string]string, version string) error
	// resubscribe changes the names of a non-wildcard subscription.
	resubscribe(typeURL string, names, added, removed []string) error
	recv() (*update, error)
	ack(u *update, names []string) error
	nack(u *update, names []string, acceptedVersion string, reason error) error
}

func errorDetail(err error) *status.Status {
	return &status.Status{Code: int32(codes.InvalidArgument), Message: err.Error()}
}

// sotwStream speaks State-of-the-World ADS.
type sotwStream struct {
	s      discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	node   *corev3.Node
	nonces map[string]string // nonce of the last response answered, per type, echoed on subscription changes
	vers   map[string]string // last accepted version per type
}

func openSotW(ctx context.Context, conn grpc.ClientConnInterface, node *corev3.Node) (stream, error) {
	s, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		return nil, err
	}
	return &sotwStream{s: s, node: node, nonces: map[string]string{}, vers: map[string]string{}}, nil
}

func (s *sotwStream) subscribe(typeURL string, wildcard bool, names []string, _ map[string]string, version string) error {
	if !wildcard && len(names) == 0 {
		return nil // an empty name list would mean "everything"
	}
	s.vers[typeURL] = version
	return s.s.Send(&discoveryv3.DiscoveryRequest{Node: s.node, TypeUrl: typeURL, ResourceNames: names, VersionInfo: version})
}

func (s *sotwStream) resubscribe(typeURL string, names, _, _ []string) error {
	if len(names) == 0 {
		// SotW cannot subscribe to nothing without meaning everything;
		// keep the old names and ignore what arrives for them.
		return nil
	}
	return s.s.Send(&discoveryv3.DiscoveryRequest{
		Node: s.node, TypeUrl: typeURL, ResourceNames: names,
		VersionInfo: s.vers[typeURL], ResponseNonce: s.nonces[typeURL],
	})
}

func (s *sotwStream) recv() (*update, error) {
	resp, err := s.s.Recv()
	if err != nil {
		return nil, err
	}
	u := &update{
		typeURL: resp.GetTypeUrl(),
		nonce:   resp.GetNonce(),
		version: resp.GetVersionInfo(),
		full:    wildcardType(resp.GetTypeUrl()),
		raw:     make([]rawResource, len(resp.GetResources())),
	}
	for i, a := range resp.GetResources() {
		u.raw[i] = rawResource{any: a}
	}
	return u, nil
}

func (s *sotwStream) ack(u *update, names []string) error {
	s.vers[u.typeURL] = u.version
	s.nonces[u.typeURL] = u.nonce
	return s.s.Send(&discoveryv3.DiscoveryRequest{
		Node: s.node, TypeUrl: u.typeURL, VersionInfo: u.version, ResponseNonce: u.nonce, ResourceNames: names,
	})
}

func (s *sotwStream) nack(u *update, names []string, acceptedVersion string, reason error) error {
	s.nonces[u.typeURL] = u.nonce
	return s.s.Send(&discoveryv3.DiscoveryRequest{
		Node: s.node, TypeUrl: u.typeURL, VersionInfo: acceptedVersion, ResponseNonce: u.nonce,
		ResourceNames: names, ErrorDetail: errorDetail(reason),
	})
}

// deltaStream speaks incremental (Delta) ADS.
type deltaStream struct {
	s    discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesClient
	node *corev3.Node
}

func openDelta(ctx context.Context, conn grpc.ClientConnInterface, node *corev3.Node) (stream, error) {
	s, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		return nil, err
	}
	return &deltaStream{s: s, node: node}, nil
}

func (s *deltaStream) subscribe(typeURL string, wildcard bool, names []string, known map[string]string, _ string) error {
	if wildcard {
		names = []string{"*"}
	} else if len(names) == 0 {
		return nil // an empty first request would mean "everything"
	}
	return s.s.Send(&discoveryv3.DeltaDiscoveryRequest{
		Node: s.node, TypeUrl: typeURL, ResourceNamesSubscribe: names, InitialResourceVersions: known,
	})
}

func (s *deltaStream) resubscribe(typeURL string, _, added, removed []string) error {
	if len(added) == 0 && len(removed) == 0 {
		return nil
	}
	return s.s.Send(&discoveryv3.DeltaDiscoveryRequest{
		Node: s.node, TypeUrl: typeURL, ResourceNamesSubscribe: added, ResourceNamesUnsubscribe: removed,
	})
}

func (s *deltaStream) recv() (*update, error) {
	resp, err := s.s.Recv()
	if err != nil {
		return nil, err
	}
	u := &update{
		typeURL: resp.GetTypeUrl(),
		nonce:   resp.GetNonce(),
		version: resp.GetSystemVersionInfo(),
		raw:     make([]rawResource, len(resp.GetResources())),
		removed: slices.Clone(resp.GetRemovedResources()),
	}
	for i, r := range resp.GetResources() {
		u.raw[i] = rawResource{name: r.GetName(), version: r.GetVersion(), any: r.GetResource()}
	}
	return u, nil
}

func (s *deltaStream) ack(u *update, _ []string) error {
	return s.s.Send(&discoveryv3.DeltaDiscoveryRequest{Node: s.node, TypeUrl: u.typeURL, ResponseNonce: u.nonce})
}

func (s *deltaStream) nack(u *update, _ []string, _ string, reason error) error {
	return s.s.Send(&discoveryv3.DeltaDiscoveryRequest{
		Node: s.node, TypeUrl: u.typeURL, ResponseNonce: u.nonce, ErrorDetail: errorDetail(reason),
	})
}
