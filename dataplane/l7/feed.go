package l7

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"reflect"
	"sync"
	"time"

	"github.com/sluice-mesh/sluice/dataplane/model"
)

// Snapshot is the L7 proxy's whole configuration as the agent sends it:
// the node's L7 services and who each numeric identity is.
type Snapshot struct {
	Version    uint64            `json:"version"` // counts the agent's snapshots; a restarted agent starts again at 1
	Services   []model.Service   `json:"services"`
	Identities map[uint32]string `json:"identities"`
}

// Feed hands the agent's L7 configuration to the L7 proxy, which runs as a
// process of its own so that it outlives the agent (docs/l7.md). The agent
// publishes each state it applies; the proxy follows the feed over the
// agent's local API socket (Follow), a snapshot per line of JSON.
type Feed struct {
	mu      sync.Mutex
	cur     *Snapshot
	line    []byte        // cur, encoded
	changed chan struct{} // closed when cur is replaced
}

// NewFeed returns a feed with nothing published yet.
func NewFeed() *Feed { return &Feed{changed: make(chan struct{})} }

// Publish makes services (those with L7 set; the others are skipped) and
// identities the current snapshot, unless they equal it.
func (f *Feed) Publish(services []model.Service, identities map[uint32]string) error {
	next, err := f.Prepare(services, identities)
	if err != nil {
		return err
	}
	next.Publish()
	return nil
}

// Next is a snapshot ready to be published: encoded, so that publishing it
// cannot fail once what it describes is in force.
type Next struct {
	f    *Feed
	s    *Snapshot // nil: the same as the current one
	line []byte
}

// Prepare encodes the snapshot Publish would publish, without publishing
// it. Prepare and publish one snapshot at a time.
func (f *Feed) Prepare(services []model.Service, identities map[uint32]string) (*Next, error) {
	var l7 []model.Service
	for i := range services {
		if services[i].L7 != nil {
			l7 = append(l7, services[i])
		}
	}
	f.mu.Lock()
	cur := f.cur
	f.mu.Unlock()
	if cur != nil && reflect.DeepEqual(cur.Identities, identities) &&
		len(cur.Services) == len(l7) && servicesEqual(cur.Services, l7) {
		return &Next{f: f}, nil
	}
	s := &Snapshot{Services: l7, Identities: identities, Version: 1}
	if cur != nil {
		s.Version = cur.Version + 1
	}
	line, err := json.Marshal(s)
	if err != nil {
		return nil, fmt.Errorf("encode the L7 proxy's configuration: %w", err)
	}
	return &Next{f: f, s: s, line: append(line, '\n')}, nil
}

// Publish makes the prepared snapshot the current one.
func (n *Next) Publish() {
	if n.s == nil {
		return
	}
	f := n.f
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cur, f.line = n.s, n.line
	close(f.changed)
	f.changed = make(chan struct{})
}

func servicesEqual(a, b []model.Service) bool {
	for i := range a {
		if !a[i].Equal(&b[i]) {
			return false
		}
	}
	return true
}

// ServeHTTP streams the feed: the current snapshot at once (when there is
// one), then each new one, until the client goes away.
func (f *Feed) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	_ = rc.Flush()
	var sent uint64
	for {
		f.mu.Lock()
		cur, line, changed := f.cur, f.line, f.changed
		f.mu.Unlock()
		if cur != nil && cur.Version != sent {
			if _, err := w.Write(line); err != nil {
				return
			}
			if err := rc.Flush(); err != nil {
				return
			}
			sent = cur.Version
		}
		select {
		case <-changed:
		case <-r.Context().Done():
			return
		}
	}
}

// FeedPath is where the agent's local API serves the feed.
const FeedPath = "/v1/l7"

// Follow reads the feed from the agent's local API through client (whose
// transport reaches the agent's socket) and calls apply with each snapshot,
// until ctx ends. When the agent is away it keeps trying, every retry at
// first and less often as it stays away (up to 5 s); the proxy goes on
// serving its last snapshot meanwhile. A snapshot apply refuses is logged
// and the proxy keeps the previous one.
func Follow(ctx context.Context, client *http.Client, apply func(*Snapshot) error, retry time.Duration, log *slog.Logger) {
	wait := retry
	for {
		got, err := follow(ctx, client, apply, log)
		if ctx.Err() != nil {
			return
		}
		if got {
			wait = retry
		}
		log.Warn("lost the agent's L7 feed; serving the last configuration", "err", err, "retry_in", wait)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, 5*time.Second)
	}
}

// follow reads one connection's snapshots; got says whether it read any.
func follow(ctx context.Context, client *http.Client, apply func(*Snapshot) error, log *slog.Logger) (got bool, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://agent"+FeedPath, nil)
	if err != nil {
		return false, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return false, fmt.Errorf("agent answered %s: %s", resp.Status, body)
	}
	rd := bufio.NewReaderSize(resp.Body, 64<<10)
	for {
		line, err := rd.ReadBytes('\n')
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return got, err
		}
		var s Snapshot
		if err := json.Unmarshal(line, &s); err != nil {
			return got, fmt.Errorf("decode a snapshot of the L7 feed: %w", err)
		}
		got = true
		if err := apply(&s); err != nil {
			log.Error("refused the agent's L7 configuration; keeping the previous one", "version", s.Version, "err", err)
			continue
		}
		log.Info("L7 configuration applied", "version", s.Version, "services", len(s.Services))
	}
}
