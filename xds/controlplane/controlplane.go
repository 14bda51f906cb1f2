// Package controlplane serves a mesh file to Sluice agents as Envoy v3 xDS
// over gRPC (ADS, state of the world and delta), following edits of the file.
package controlplane

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"

	"github.com/sluice-mesh/sluice/identity"
	"github.com/sluice-mesh/sluice/xds/mesh"
)

// DefaultPollInterval is how often the mesh file is checked for edits when
// Options.PollInterval is not set.
const DefaultPollInterval = time.Second

// stopTimeout bounds how long ServeADS waits for open streams and calls to end
// once its context ends, before closing connections.
const stopTimeout = 5 * time.Second

// ErrInvalidOptions is the class of errors New returns for Options it
// cannot work with.
var ErrInvalidOptions = errors.New("invalid control plane options")

// Options configure a Server.
type Options struct {
	ConfigPath   string        // required: the mesh file to serve
	PollInterval time.Duration // optional: how often the file is checked for edits; DefaultPollInterval if 0
	Logger       *slog.Logger  // optional: nil logs nothing
	TLS          *tls.Config   // optional: server TLS (set ClientAuth and ClientCAs for mTLS); nil serves plaintext
}

// Server serves one snapshot of xDS resources, rendered from the mesh file,
// to every client whatever its node, and replaces it when a valid edit of
// the file is seen. Its methods are safe for concurrent use.
type Server struct {
	path     string
	interval time.Duration
	log      *slog.Logger
	tls      *tls.Config
	cache    cache.SnapshotCache

	// pollMu serializes checks of the file (Serve may run more than once at
	// a time) and guards the fields below it.
	pollMu  sync.Mutex
	seen    [sha256.Size]byte // what the previous check found: the content's hash, zero if unreadable
	handled [sha256.Size]byte // what was last acted on, in the same terms
	stamp   os.FileInfo       // the file when it was last read; nil if unknown
	readAt  time.Time         // when it was last read

	mu        sync.Mutex
	version   string              // guarded by mu: version of the snapshot being served
	lastErr   error               // guarded by mu: why the file's current content is not served
	workloads []identity.Workload // guarded by mu: the served file's workloads section; never modified
}

// New loads and validates the mesh file and prepares the snapshot to serve.
// An invalid file is an error naming the file, line and field (a
// *mesh.Error, matching mesh.ErrInvalid); an unreadable one wraps the
// error from the file system.
func New(opts Options) (*Server, error) {
	if opts.ConfigPath == "" {
		return nil, fmt.Errorf("%w: ConfigPath is required", ErrInvalidOptions)
	}
	if opts.PollInterval < 0 {
		return nil, fmt.Errorf("%w: PollInterval %v is negative", ErrInvalidOptions, opts.PollInterval)
	}
	s := &Server{
		path:     opts.ConfigPath,
		interval: opts.PollInterval,
		log:      opts.Logger,
		tls:      opts.TLS,
	}
	if s.interval == 0 {
		s.interval = DefaultPollInterval
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.cache = cache.NewSnapshotCache(true, allNodes{}, goLogger{s.log})

	data, err := s.read()
	if err != nil {
		return nil, fmt.Errorf("read mesh file: %w", err)
	}
	m, err := mesh.Parse(s.path, data)
	if err != nil {
		return nil, err
	}
	if _, err := s.apply(context.Background(), m); err != nil {
		return nil, err
	}
	s.seen = sha256.Sum256(data)
	s.handled = s.seen
	return s, nil
}

// Version returns the version of the snapshot being served: a short hash of
// its resources, so the same resources always have the same version.
func (s *Server) Version() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.version
}

// Workloads returns the workloads section of the mesh file being served.
// The caller must not modify the slice.
func (s *Server) Workloads() []identity.Workload {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.workloads
}

// LastError returns why the mesh file's current content is not being
// served — an invalid edit (a *mesh.Error) or a file that cannot be read —
// or nil when the file as it is now is served.
func (s *Server) LastError() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastErr
}

func (s *Server) setError(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lastErr = err
}

// allNodes hashes every node to the same key: the control plane serves one
// snapshot to all clients.
type allNodes struct{}

// ID implements cache.NodeHash.
func (allNodes) ID(*core.Node) string { return "" }

var _ cache.NodeHash = allNodes{}

// Serve serves xDS on lis until ctx ends, and follows edits of the mesh file
// meanwhile. lis may be any stream listener (TCP, unix socket); Serve closes
// it. Serve may run several times at once on different listeners; all serve
// the same snapshot. Once ctx ends, Serve ends open streams, waits a
// bounded time for calls to finish and returns nil; it returns an error only
// if serving fails before.
func (s *Server) Serve(ctx context.Context, lis net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() { s.watch(ctx) })
	err := ServeADS(ctx, lis, s.cache, s.log, s.tls)
	cancel()
	wg.Wait()
	return err
}
