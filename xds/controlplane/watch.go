package controlplane

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"time"

	"github.com/sluice-mesh/sluice/xds/mesh"
)

// watch checks the mesh file every interval until ctx ends.
func (s *Server) watch(ctx context.Context) {
	t := time.NewTicker(s.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.check(ctx)
		}
	}
}

// check reads the mesh file and acts on what it finds once two consecutive
// checks found the same: the same content, or no readable file. A file
// caught halfway through a non-atomic write (an editor saving in place), or
// missing for the instant an editor renames files around, is thus never
// acted on, at the cost of one interval of delay. Each settled state is
// acted on, and logged, once.
func (s *Server) check(ctx context.Context) {
	s.pollMu.Lock()
	defer s.pollMu.Unlock()

	// ReadFile opens the path anew each time: editors and tools replace a
	// file by renaming a new one over it, so a kept descriptor would go on
	// reading the old file. The zero sum stands for "unreadable".
	var sum [sha256.Size]byte
	data, err := os.ReadFile(s.path)
	if err == nil {
		sum = sha256.Sum256(data)
	}
	if sum != s.seen {
		s.seen = sum
		return
	}
	if sum == s.handled {
		return
	}
	s.handled = sum
	if err != nil {
		err = fmt.Errorf("read mesh file: %w", err)
		s.log.Error("mesh file unreadable; still serving the last valid version", "error", err.Error(), "version", s.Version())
		s.setError(err)
		return
	}
	m, err := mesh.Parse(s.path, data)
	if err != nil {
		s.log.Error("mesh file edit rejected; still serving the last valid version", "error", err.Error(), "version", s.Version())
		s.setError(err)
		return
	}
	hadError := s.LastError() != nil
	changed, err := s.apply(ctx, m)
	if err != nil {
		s.log.Error("mesh file edit not served; still serving the last valid version", "error", err.Error(), "version", s.Version())
		s.setError(err)
		return
	}
	s.setError(nil)
	if !changed && hadError {
		s.log.Info("mesh file valid again; resources unchanged", "file", s.path, "version", s.Version())
	}
}
