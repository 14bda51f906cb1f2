package controlplane

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/log"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/delta/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/sotw/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
)

// ServeADS serves the aggregated discovery service (state of the world and
// delta) from c on lis until ctx ends, to every client whatever its node.
// It is the server side both of this package's Server and of the
// Kubernetes-backed control plane. lis may be any stream listener; ServeADS
// closes it. A client that rejects resources is logged to log (nil logs
// nothing); a state-of-the-world client is not sent the same rejected
// resources again at once (see streams). tlsConfig, if not nil, is the
// server's TLS. Once ctx ends, ServeADS ends open streams, waits a bounded
// time for calls to finish and returns nil; it returns an error only if
// serving fails before.
func ServeADS(ctx context.Context, lis net.Listener, c cache.Cache, log *slog.Logger, tlsConfig *tls.Config) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g := grpcServer(ctx, c, log, tlsConfig)
	served := make(chan error, 1)
	go func() { served <- g.Serve(lis) }()

	var err error
	select {
	case err = <-served:
		err = fmt.Errorf("serve xds on %s: %w", lis.Addr(), err)
		g.Stop()
	case <-ctx.Done():
		// The xDS handlers end their streams when ctx ends, so a graceful
		// stop normally completes at once; the bound is for unary calls and
		// handlers stuck on a slow client.
		stopped := make(chan struct{})
		go func() {
			g.GracefulStop()
			close(stopped)
		}()
		select {
		case <-stopped:
		case <-time.After(stopTimeout):
			g.Stop()
			<-stopped
		}
		<-served
	}
	return err
}

// grpcServer returns a gRPC server with the aggregated discovery service
// serving c, whose streams end when ctx ends.
func grpcServer(ctx context.Context, c cache.Cache, log *slog.Logger, tlsConfig *tls.Config) *grpc.Server {
	opts := []grpc.ServerOption{
		// Agents keep one ADS stream open for their lifetime. Pinging idle
		// connections finds agents that vanished without closing theirs;
		// tolerating frequent client pings keeps agents that ping to detect
		// a vanished control plane from being cut off for it.
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
	}
	if tlsConfig != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(tlsConfig)))
	}
	g := grpc.NewServer(opts...)
	logger := goLogger{log}
	// One streams per gRPC server: stream IDs are counted per xDS server.
	cb := &streams{log: log, sent: map[int64]map[string]string{}}
	discoverygrpc.RegisterAggregatedDiscoveryServiceServer(g, &ads{
		sotw:  sotw.NewServer(ctx, c, cb, sotw.WithLogger(logger)),
		delta: delta.NewServer(ctx, c, cb, delta.WithLogger(logger)),
	})
	return g
}

// ads is the aggregated discovery service. It is what go-control-plane's
// server.NewServer assembles, without the REST and per-type services: that
// package also pulls in the ratelimit module, which Sluice does not need.
type ads struct {
	sotw  sotw.Server
	delta delta.Server
}

var _ discoverygrpc.AggregatedDiscoveryServiceServer = (*ads)(nil)

// StreamAggregatedResources serves state-of-the-world ADS.
func (a *ads) StreamAggregatedResources(st discoverygrpc.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error {
	return a.sotw.StreamHandler(st, resource.AnyType)
}

// DeltaAggregatedResources serves incremental (delta) ADS.
func (a *ads) DeltaAggregatedResources(st discoverygrpc.AggregatedDiscoveryService_DeltaAggregatedResourcesServer) error {
	return a.delta.DeltaStreamHandler(st, resource.AnyType)
}

// streams follows xDS streams to log rejected resources and to stop a
// state-of-the-world client that rejects a snapshot from getting it again
// at once.
//
// A NACK carries the version the client last accepted, which differs from
// the snapshot's, and go-control-plane answers any request whose version
// differs from the snapshot's with the snapshot: the client would reject it
// again, in a loop as fast as the two can go. streams rewrites a NACK's
// version to the version it rejects, so the client gets the next snapshot,
// not the same one again. Delta streams need no such care: go-control-plane
// counts a resource as the client's once sent, accepted or not.
type streams struct {
	log *slog.Logger

	mu   sync.Mutex
	sent map[int64]map[string]string // guarded by mu: stream ID → type URL → version last sent
}

var (
	_ sotw.Callbacks  = (*streams)(nil)
	_ delta.Callbacks = (*streams)(nil)
)

// OnStreamOpen implements sotw.Callbacks.
func (c *streams) OnStreamOpen(_ context.Context, id int64, _ string) error {
	c.log.Debug("xds stream opened", "stream", id, "protocol", "sotw")
	return nil
}

// OnStreamClosed implements sotw.Callbacks.
func (c *streams) OnStreamClosed(id int64, node *core.Node) {
	c.mu.Lock()
	delete(c.sent, id)
	c.mu.Unlock()
	c.log.Debug("xds stream closed", "stream", id, "node", node.GetId())
}

// OnStreamRequest implements sotw.Callbacks. It runs before the request is
// handed to the cache, so a change of req is what the cache sees.
func (c *streams) OnStreamRequest(id int64, req *discoverygrpc.DiscoveryRequest) error {
	if req.GetErrorDetail() == nil {
		return nil
	}
	c.mu.Lock()
	sent := c.sent[id][req.GetTypeUrl()]
	c.mu.Unlock()
	c.log.Warn("xds client rejected resources", "node", req.GetNode().GetId(), "type", req.GetTypeUrl(),
		"version", sent, "error", req.GetErrorDetail().GetMessage())
	if sent != "" {
		req.VersionInfo = sent
	}
	return nil
}

// OnStreamResponse implements sotw.Callbacks.
func (c *streams) OnStreamResponse(_ context.Context, id int64, _ *discoverygrpc.DiscoveryRequest, resp *discoverygrpc.DiscoveryResponse) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sent[id] == nil {
		c.sent[id] = map[string]string{}
	}
	c.sent[id][resp.GetTypeUrl()] = resp.GetVersionInfo()
}

// OnDeltaStreamOpen implements delta.Callbacks.
func (c *streams) OnDeltaStreamOpen(_ context.Context, id int64, _ string) error {
	c.log.Debug("xds stream opened", "stream", id, "protocol", "delta")
	return nil
}

// OnDeltaStreamClosed implements delta.Callbacks.
func (c *streams) OnDeltaStreamClosed(id int64, node *core.Node) {
	c.log.Debug("xds stream closed", "stream", id, "node", node.GetId())
}

// OnStreamDeltaRequest implements delta.Callbacks.
func (c *streams) OnStreamDeltaRequest(_ int64, req *discoverygrpc.DeltaDiscoveryRequest) error {
	if req.GetErrorDetail() != nil {
		c.log.Warn("xds client rejected resources", "node", req.GetNode().GetId(), "type", req.GetTypeUrl(),
			"nonce", req.GetResponseNonce(), "error", req.GetErrorDetail().GetMessage())
	}
	return nil
}

// OnStreamDeltaResponse implements delta.Callbacks.
func (c *streams) OnStreamDeltaResponse(int64, *discoverygrpc.DeltaDiscoveryRequest, *discoverygrpc.DeltaDiscoveryResponse) {
}

// Logger returns a go-control-plane logger that writes to l. Its info
// messages report every watch of every request, so they go to debug.
func Logger(l *slog.Logger) log.Logger { return goLogger{l} }

// goLogger passes go-control-plane's logs to slog.
type goLogger struct{ l *slog.Logger }

var _ log.Logger = goLogger{}

func (g goLogger) logf(level slog.Level, format string, args []any) {
	if g.l.Enabled(context.Background(), level) {
		g.l.Log(context.Background(), level, fmt.Sprintf(format, args...), "component", "go-control-plane")
	}
}

// Debugf implements log.Logger.
func (g goLogger) Debugf(format string, args ...any) { g.logf(slog.LevelDebug, format, args) }

// Infof implements log.Logger.
func (g goLogger) Infof(format string, args ...any) { g.logf(slog.LevelDebug, format, args) }

// Warnf implements log.Logger.
func (g goLogger) Warnf(format string, args ...any) { g.logf(slog.LevelWarn, format, args) }

// Errorf implements log.Logger.
func (g goLogger) Errorf(format string, args ...any) { g.logf(slog.LevelError, format, args) }
