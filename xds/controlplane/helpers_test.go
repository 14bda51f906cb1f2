package controlplane_test

import (
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/sluice-mesh/sluice/xds/controlplane"
)

const (
	listenerType = "type.googleapis.com/envoy.config.listener.v3.Listener"
	clusterType  = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	endpointType = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"

	poll = 20 * time.Millisecond
	// quiet is how long a test waits to be sure nothing is pushed: enough
	// polls for an edit to settle and be served several times over.
	quiet = 15 * poll
	// patience bounds every wait for something that should happen.
	patience = 10 * time.Second
)

var node = &core.Node{Id: "node-1", Cluster: "test"}

// meshFile is the file the tests start from: a TCP and a UDP service.
const meshFile = `
services:
  - name: web
    namespace: demo
    vips: [10.96.0.10]
    ports: [{port: 80, targetPort: 8080}]
    endpoints:
      - address: 10.244.0.11
        workload: {name: backend-a, serviceAccount: web, node: node-1}
      - address: 10.244.0.12
        weight: 3
  - name: dns
    namespace: demo
    vips: [10.96.0.53]
    ports: [{port: 53, protocol: UDP, targetPort: 5353}]
    endpoints:
      - address: 10.244.0.11
`

// writeFile replaces path's content the way editors do: write a new file,
// rename it over the old one.
func writeFile(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// logBuffer collects log records for assertions.
type logBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

type testServer struct {
	*controlplane.Server
	path string
	addr string
	logs *logBuffer
}

// start writes content to a mesh file in a temporary directory and serves
// it on a loopback listener until the test ends.
func start(t *testing.T, content string, opts controlplane.Options) *testServer {
	t.Helper()
	path := filepath.Join(t.TempDir(), "mesh.yaml")
	writeFile(t, path, content)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return serve(t, path, lis, opts)
}

func serve(t *testing.T, path string, lis net.Listener, opts controlplane.Options) *testServer {
	t.Helper()
	logs := &logBuffer{}
	opts.ConfigPath = path
	opts.PollInterval = poll
	opts.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	s, err := controlplane.New(opts)
	if err != nil {
		lis.Close()
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, lis) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(patience):
			t.Errorf("Serve did not return %v after its context ended", patience)
		}
		if t.Failed() {
			t.Logf("control plane logs:\n%s", logs)
		}
	})
	return &testServer{Server: s, path: path, addr: lis.Addr().String(), logs: logs}
}

func dial(t *testing.T, target string, creds credentials.TransportCredentials) discoverygrpc.AggregatedDiscoveryServiceClient {
	t.Helper()
	if creds == nil {
		creds = insecure.NewCredentials()
	}
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return discoverygrpc.NewAggregatedDiscoveryServiceClient(conn)
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	t.Cleanup(cancel)
	return ctx
}

// eventually waits until cond holds.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(patience)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(poll / 4)
	}
}

// sotwStream is a state-of-the-world ADS stream whose responses are read in
// the background, so that a test can wait for one with a bound, or check
// that none comes.
type sotwStream struct {
	inbox[*discoverygrpc.DiscoveryResponse]
	t  *testing.T
	st discoverygrpc.AggregatedDiscoveryService_StreamAggregatedResourcesClient
}

// inbox receives the responses of a stream, of either protocol, and hands
// them out by type.
type inbox[R interface{ GetTypeUrl() string }] struct {
	it      *testing.T
	resps   chan R
	err     chan error
	pending []R
}

// receive starts reading responses with recv until it fails.
func (in *inbox[R]) receive(t *testing.T, recv func() (R, error)) {
	in.it, in.resps, in.err = t, make(chan R, 16), make(chan error, 1)
	go func() {
		for {
			r, err := recv()
			if err != nil {
				in.err <- err
				return
			}
			in.resps <- r
		}
	}()
}

// next returns the next response of typeURL, keeping those of other types
// for later calls.
func (in *inbox[R]) next(typeURL string) R {
	in.it.Helper()
	for i, r := range in.pending {
		if r.GetTypeUrl() == typeURL {
			in.pending = append(in.pending[:i], in.pending[i+1:]...)
			return r
		}
	}
	timeout := time.After(patience)
	for {
		select {
		case r := <-in.resps:
			if r.GetTypeUrl() == typeURL {
				return r
			}
			in.pending = append(in.pending, r)
		case err := <-in.err:
			in.it.Fatalf("waiting for %s: stream ended: %v", typeURL, err)
		case <-timeout:
			in.it.Fatalf("no %s response in %v", typeURL, patience)
		}
	}
}

// none checks that no response arrives for a while.
func (in *inbox[R]) none() {
	in.it.Helper()
	if len(in.pending) > 0 {
		in.it.Fatalf("unexpected response: %v", in.pending[0])
	}
	select {
	case r := <-in.resps:
		in.it.Fatalf("unexpected response: %v", r)
	case err := <-in.err:
		in.it.Fatalf("stream ended: %v", err)
	case <-time.After(quiet):
	}
}

func openSotW(t *testing.T, c discoverygrpc.AggregatedDiscoveryServiceClient) *sotwStream {
	t.Helper()
	st, err := c.StreamAggregatedResources(testContext(t))
	if err != nil {
		t.Fatal(err)
	}
	s := &sotwStream{t: t, st: st}
	s.receive(t, st.Recv)
	return s
}

func (s *sotwStream) send(req *discoverygrpc.DiscoveryRequest) {
	s.t.Helper()
	if err := s.st.Send(req); err != nil {
		s.t.Fatalf("send %s request: %v", req.TypeUrl, err)
	}
}

// subscribe sends the first request of a type: names nil is a wildcard.
func (s *sotwStream) subscribe(typeURL string, names ...string) {
	s.t.Helper()
	s.send(&discoverygrpc.DiscoveryRequest{Node: node, TypeUrl: typeURL, ResourceNames: names})
}

// ack accepts resp, keeping the subscription to names.
func (s *sotwStream) ack(resp *discoverygrpc.DiscoveryResponse, names ...string) {
	s.t.Helper()
	s.send(&discoverygrpc.DiscoveryRequest{TypeUrl: resp.TypeUrl, VersionInfo: resp.VersionInfo,
		ResponseNonce: resp.Nonce, ResourceNames: names})
}

// deltaStream is sotwStream for delta ADS.
type deltaStream struct {
	inbox[*discoverygrpc.DeltaDiscoveryResponse]
	t  *testing.T
	st discoverygrpc.AggregatedDiscoveryService_DeltaAggregatedResourcesClient
}

func openDelta(t *testing.T, c discoverygrpc.AggregatedDiscoveryServiceClient) *deltaStream {
	t.Helper()
	st, err := c.DeltaAggregatedResources(testContext(t))
	if err != nil {
		t.Fatal(err)
	}
	s := &deltaStream{t: t, st: st}
	s.receive(t, st.Recv)
	return s
}

func (s *deltaStream) send(req *discoverygrpc.DeltaDiscoveryRequest) {
	s.t.Helper()
	if err := s.st.Send(req); err != nil {
		s.t.Fatalf("send %s request: %v", req.TypeUrl, err)
	}
}

func (s *deltaStream) ack(resp *discoverygrpc.DeltaDiscoveryResponse) {
	s.t.Helper()
	s.send(&discoverygrpc.DeltaDiscoveryRequest{TypeUrl: resp.TypeUrl, ResponseNonce: resp.Nonce})
}
