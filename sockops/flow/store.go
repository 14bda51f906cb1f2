package flow

import (
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Store is a bounded in-memory ring of the most recent flows, with live
// subscriptions. When full, each Add overwrites the oldest flow.
//
// A Store is safe for concurrent use. Add never blocks on a subscriber:
// a subscriber whose buffer is full misses the flow, and the miss is
// counted (Subscription.Lost, Stats.LostSubscribers).
type Store struct {
	mu sync.Mutex
	// ring holds the stored flows; the oldest is at ring[head] once the
	// ring is full, at ring[0] before. Guarded by mu, as are head, n,
	// seq, and subs.
	ring []Flow
	head int // where the next Add writes
	n    int // flows stored, at most len(ring)
	seq  uint64
	subs []*Subscription // the open subscriptions
	lost uint64          // flows subscribers missed, closed ones included
}

// NewStore returns an empty Store that keeps the most recent capacity
// flows. It panics if capacity is not positive: a store that keeps
// nothing is a programming error, not a configuration the agent should
// run with.
func NewStore(capacity int) *Store {
	if capacity <= 0 {
		panic(fmt.Sprintf("flow.NewStore: capacity %d: want a positive number of flows", capacity))
	}
	return &Store{ring: make([]Flow, capacity)}
}

// Add assigns f the next sequence number (1, 2, ...), stores it, offers it
// to every subscription whose filter matches it, and returns the stored
// flow. The caller sets f.Time. Add takes constant time (plus one
// non-blocking send per subscription) and does not allocate.
func (s *Store) Add(f Flow) Flow {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seq++
	f.Seq = s.seq
	s.ring[s.head] = f
	s.head++
	if s.head == len(s.ring) {
		s.head = 0
	}
	if s.n < len(s.ring) {
		s.n++
	}
	// Sending under mu keeps each subscriber's flows in Seq order.
	for _, sub := range s.subs {
		if !sub.filter.Match(f) {
			continue
		}
		select {
		case sub.c <- f:
		default:
			sub.lost.Add(1)
			s.lost++
		}
	}
	return f
}

// at returns the i-th stored flow, oldest first. s.mu must be held.
func (s *Store) at(i int) *Flow {
	if s.n < len(s.ring) {
		return &s.ring[i]
	}
	return &s.ring[(s.head+i)%len(s.ring)]
}

// Last returns the last n stored flows that fl matches, oldest first, or
// every matching flow if n <= 0.
func (s *Store) Last(n int, fl Filter) []Flow {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Flow
	for i := s.n - 1; i >= 0 && (n <= 0 || len(out) < n); i-- {
		if f := s.at(i); fl.Match(*f) {
			out = append(out, *f)
		}
	}
	slices.Reverse(out)
	return out
}

// Since returns the stored flows that fl matches and whose Time is not
// before t, oldest first.
func (s *Store) Since(t time.Time, fl Filter) []Flow {
	if t.After(fl.Since) {
		fl.Since = t
	}
	return s.Last(0, fl)
}

// Stats are a Store's counters.
type Stats struct {
	Stored          int    // flows held now
	Capacity        int    // the most the Store holds
	Total           uint64 // flows added since the Store was made
	LostSubscribers uint64 // flows subscribers missed because they read too slowly
}

// Stats returns the Store's counters.
func (s *Store) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Stats{Stored: s.n, Capacity: len(s.ring), Total: s.seq, LostSubscribers: s.lost}
}

// Subscribe returns a subscription to the flows added from now on that fl
// matches. Up to buffer flows wait for the reader (at least 1); flows that
// arrive while the buffer is full are lost to this subscriber and counted.
// The caller must Close the subscription.
func (s *Store) Subscribe(fl Filter, buffer int) *Subscription {
	sub := &Subscription{store: s, filter: fl, c: make(chan Flow, max(buffer, 1))}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.subs = append(s.subs, sub)
	return sub
}

// Subscription receives the flows added to a Store that its filter
// matches, in Seq order. Its methods are safe for concurrent use.
type Subscription struct {
	store  *Store
	filter Filter    // immutable
	c      chan Flow // sent to under store.mu; closed by Close under store.mu
	lost   atomic.Uint64
	closed bool // guarded by store.mu
}

// C returns the channel the subscription's flows arrive on. It is closed
// by Close.
func (sub *Subscription) C() <-chan Flow { return sub.c }

// Lost returns how many matching flows this subscriber missed because its
// buffer was full.
func (sub *Subscription) Lost() uint64 { return sub.lost.Load() }

// Close ends the subscription and closes its channel; flows still
// buffered can be read. Close may be called more than once.
func (sub *Subscription) Close() {
	s := sub.store
	s.mu.Lock()
	defer s.mu.Unlock()
	if sub.closed {
		return
	}
	sub.closed = true
	s.subs = slices.DeleteFunc(s.subs, func(x *Subscription) bool { return x == sub })
	close(sub.c)
}
