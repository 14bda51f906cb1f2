package controlplane

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/sluice-mesh/sluice/xds/mesh"
)

// servedTypes are the resource types a mesh renders to, in the order they
// enter the version hash.
var servedTypes = []resource.Type{resource.ListenerType, resource.ClusterType, resource.EndpointType}

// apply renders m and serves it unless its version is the one being
// served, clearing LastError. It reports whether the served snapshot
// changed.
func (s *Server) apply(ctx context.Context, m *mesh.Mesh) (bool, error) {
	r := m.Resources()
	byType := map[resource.Type][]types.Resource{}
	for _, l := range r.Listeners {
		byType[resource.ListenerType] = append(byType[resource.ListenerType], l)
	}
	for _, c := range r.Clusters {
		byType[resource.ClusterType] = append(byType[resource.ClusterType], c)
	}
	for _, e := range r.Endpoints {
		byType[resource.EndpointType] = append(byType[resource.EndpointType], e)
	}
	version, err := contentVersion(byType)
	if err != nil {
		return false, err
	}
	if version == s.Version() {
		// The workloads section is not part of the resources.
		s.mu.Lock()
		s.workloads = m.Workloads
		s.mu.Unlock()
		return false, nil
	}
	snap, err := cache.NewSnapshot(version, byType)
	if err != nil {
		return false, fmt.Errorf("build snapshot of %s: %w", s.path, err)
	}
	// In ADS mode go-control-plane expects every snapshot to be consistent
	// (each cluster's assignment present); a rendering that is not is a bug
	// in package mesh, and serving it would leave clients waiting.
	if err := snap.Consistent(); err != nil {
		return false, fmt.Errorf("snapshot of %s is inconsistent: %w", s.path, err)
	}
	// Version, LastError, Workloads and the log change before clients are
	// told, so that a client holding the new version never sees them
	// report the old state.
	endpoints := 0
	for _, svc := range m.Services {
		endpoints += len(svc.Endpoints)
	}
	s.log.Info("serving mesh file", "file", s.path, "version", version, "services", len(m.Services),
		"listeners", len(r.Listeners), "clusters", len(r.Clusters), "endpoints", endpoints)
	s.mu.Lock()
	s.version = version
	s.lastErr = nil
	s.workloads = m.Workloads
	s.mu.Unlock()
	// The cache stores the snapshot before notifying watches; an error here
	// only means that ctx ended while notifying.
	if err := s.cache.SetSnapshot(ctx, "", snap); err != nil {
		s.log.Debug("notifying xds watches cut short", "error", err)
	}
	return true, nil
}

// contentVersion hashes resources marshalled as go-control-plane does for
// its per-resource delta versions (deterministically), so that the same
// resources always give the same version.
func contentVersion(byType map[resource.Type][]types.Resource) (string, error) {
	h := sha256.New()
	var n [8]byte
	for _, typ := range servedTypes {
		for _, r := range byType[typ] {
			b, err := cache.MarshalResource(r)
			if err != nil {
				return "", fmt.Errorf("marshal %s %s: %w", typ, cache.GetResourceName(r), err)
			}
			h.Write([]byte(typ))
			binary.BigEndian.PutUint64(n[:], uint64(len(b)))
			h.Write(n[:])
			h.Write(b)
		}
	}
	return hex.EncodeToString(h.Sum(nil)[:8]), nil
}
