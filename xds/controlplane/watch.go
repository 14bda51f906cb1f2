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

	// The path is opened anew each time: editors and tools replace a file
	// by renaming a new one over it, so a kept descriptor would go on
	// reading the old file. The zero sum stands for "unreadable". A file
	// that cannot have changed since it was last read is not read again.
	var sum [sha256.Size]byte
	var data []byte
	var err error
	if s.unchanged() {
		sum = s.seen
	} else if data, err = s.read(); err == nil {
		sum = sha256.Sum256(data)
	}
	if sum != s.seen {
		s.seen = sum
		return
	}
	if sum == s.handled {
		return
	}
	if data == nil && err == nil { // settled, but not read by this check
		if data, err = s.read(); err == nil {
			if now := sha256.Sum256(data); now != sum {
				s.seen = now
				return
			}
		}
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

// rereadEvery bounds how long the file goes unread while its size, time of
// modification and identity say it is unchanged: a tool can write a file
// and then set its old time back.
const rereadEvery = time.Minute

// read reads the mesh file and records what it looked like then.
func (s *Server) read() ([]byte, error) {
	fi, err := os.Stat(s.path)
	now := time.Now()
	data, rerr := os.ReadFile(s.path)
	if rerr != nil {
		s.stamp = nil
		return nil, rerr
	}
	s.stamp, s.readAt = nil, now
	if err == nil {
		s.stamp = fi
	}
	return data, nil
}

// unchanged reports whether the file is the one last read, as it was then:
// the same file (device and inode), size and time of modification, last
// modified well before it was read (so that a later write, landing within
// the file system's timestamp granularity of the read, cannot go unseen),
// and read within rereadEvery. Reading a large mesh file and hashing it on
// every poll cost an agent at 100,000 services most of a core.
func (s *Server) unchanged() bool {
	if s.stamp == nil || time.Since(s.readAt) > rereadEvery {
		return false
	}
	fi, err := os.Stat(s.path)
	return err == nil && os.SameFile(fi, s.stamp) && fi.Size() == s.stamp.Size() &&
		fi.ModTime().Equal(s.stamp.ModTime()) && s.stamp.ModTime().Before(s.readAt.Add(-time.Second))
}
