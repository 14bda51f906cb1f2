package flow_test

import (
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/sluice-mesh/sluice/sockops/flow"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// numbered returns a flow at t0+i seconds from workload "w<i%3>" in
// namespace "shop", so that filters can pick some of them out.
func numbered(i int) flow.Flow {
	return flow.Flow{
		Time:        t0.Add(time.Duration(i) * time.Second),
		Event:       flow.EventOpen,
		Verdict:     flow.VerdictAllowed,
		Protocol:    "tcp",
		Source:      flow.Peer{Workload: fmt.Sprintf("w%d", i%3), Namespace: "shop"},
		Destination: flow.Peer{Workload: "db", Namespace: "data", Address: netip.MustParseAddrPort("10.0.0.1:5432")},
	}
}

func seqs(fs []flow.Flow) []uint64 {
	out := []uint64{}
	for _, f := range fs {
		out = append(out, f.Seq)
	}
	return out
}

func TestNewStorePanicsOnNoCapacity(t *testing.T) {
	for _, c := range []int{0, -1} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("NewStore(%d) did not panic", c)
				}
			}()
			flow.NewStore(c)
		}()
	}
}

func TestStoreAddAssignsSeq(t *testing.T) {
	s := flow.NewStore(4)
	for i := 1; i <= 3; i++ {
		f := numbered(i)
		f.Seq = 99 // the caller's Seq is replaced
		if got := s.Add(f); got.Seq != uint64(i) || !got.Time.Equal(f.Time) {
			t.Fatalf("Add #%d returned seq %d time %v, want seq %d time %v", i, got.Seq, got.Time, i, f.Time)
		}
	}
}

func TestStoreQueries(t *testing.T) {
	s := flow.NewStore(5)
	for i := 1; i <= 8; i++ { // seqs 4..8 remain
		s.Add(numbered(i))
	}
	w1 := flow.Filter{FromWorkload: "w1"} // i%3 == 1: seqs 4, 7
	tests := []struct {
		name string
		got  []flow.Flow
		want []uint64
	}{
		{"last all", s.Last(0, flow.Filter{}), []uint64{4, 5, 6, 7, 8}},
		{"last 2", s.Last(2, flow.Filter{}), []uint64{7, 8}},
		{"last more than stored", s.Last(50, flow.Filter{}), []uint64{4, 5, 6, 7, 8}},
		{"last filtered", s.Last(0, w1), []uint64{4, 7}},
		{"last 1 filtered", s.Last(1, w1), []uint64{7}},
		{"last none match", s.Last(3, flow.Filter{FromWorkload: "nobody"}), []uint64{}},
		{"since", s.Since(t0.Add(6*time.Second), flow.Filter{}), []uint64{6, 7, 8}},
		{"since filtered", s.Since(t0.Add(5*time.Second), w1), []uint64{7}},
		{"since before all", s.Since(t0, flow.Filter{}), []uint64{4, 5, 6, 7, 8}},
		{"since after all", s.Since(t0.Add(time.Hour), flow.Filter{}), []uint64{}},
		// The later of the two bounds applies.
		{"since and filter since", s.Since(t0.Add(5*time.Second), flow.Filter{Since: t0.Add(7 * time.Second)}), []uint64{7, 8}},
	}
	for _, tt := range tests {
		if got := seqs(tt.got); !slices.Equal(got, tt.want) {
			t.Errorf("%s: got seqs %v, want %v", tt.name, got, tt.want)
		}
	}
	if got, want := s.Stats(), (flow.Stats{Stored: 5, Capacity: 5, Total: 8}); got != want {
		t.Errorf("Stats() = %+v, want %+v", got, want)
	}
}

func TestStoreBeforeFull(t *testing.T) {
	s := flow.NewStore(10)
	for i := 1; i <= 3; i++ {
		s.Add(numbered(i))
	}
	if got := seqs(s.Last(0, flow.Filter{})); !slices.Equal(got, []uint64{1, 2, 3}) {
		t.Errorf("Last(0) = %v, want [1 2 3]", got)
	}
	if got, want := s.Stats(), (flow.Stats{Stored: 3, Capacity: 10, Total: 3}); got != want {
		t.Errorf("Stats() = %+v, want %+v", got, want)
	}
}

func TestStoreSubscribe(t *testing.T) {
	s := flow.NewStore(100)
	s.Add(numbered(1)) // before the subscription: not delivered
	sub := s.Subscribe(flow.Filter{FromWorkload: "w2"}, 2)
	all := s.Subscribe(flow.Filter{}, 100)
	defer all.Close()
	for i := 2; i <= 12; i++ { // w2: i = 2, 5, 8, 11 → seqs 2, 5, 8, 11
		s.Add(numbered(i))
	}
	// The buffer holds 2; the other two matching flows were lost, and
	// flows the filter does not match are not counted as lost.
	if got := sub.Lost(); got != 2 {
		t.Errorf("Lost() = %d, want 2", got)
	}
	sub.Close()
	sub.Close() // a second Close is harmless
	var got []flow.Flow
	for f := range sub.C() { // Close closed the channel; buffered flows remain
		got = append(got, f)
	}
	if s := seqs(got); !slices.Equal(s, []uint64{2, 5}) {
		t.Errorf("subscriber got seqs %v, want [2 5]", s)
	}
	s.Add(numbered(13)) // no send on the closed channel
	if all.Lost() != 0 || len(all.C()) != 12 {
		t.Errorf("unfiltered subscriber: lost %d, buffered %d; want 0, 12", all.Lost(), len(all.C()))
	}
	if got := s.Stats().LostSubscribers; got != 2 {
		t.Errorf("Stats().LostSubscribers = %d after Close, want 2", got)
	}
}

// Add does not wait for a subscriber that never reads.
func TestStoreAddNeverBlocks(t *testing.T) {
	s := flow.NewStore(10)
	sub := s.Subscribe(flow.Filter{}, 1)
	defer sub.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 1000 {
			s.Add(numbered(i))
		}
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Add blocked on a subscriber that does not read")
	}
	if got := sub.Lost(); got != 999 {
		t.Errorf("Lost() = %d, want 999", got)
	}
}

func TestStoreAddDoesNotAllocate(t *testing.T) {
	s := flow.NewStore(1024)
	sub := s.Subscribe(flow.Filter{Namespace: "shop"}, 16) // matches, fills, then loses
	defer sub.Close()
	f := numbered(1)
	if n := testing.AllocsPerRun(1000, func() { s.Add(f) }); n != 0 {
		t.Errorf("Add allocates %v times per call, want 0", n)
	}
}

// Concurrent writers, readers and subscribers (run with -race): every
// flow gets a distinct Seq, and a subscriber sees its flows in Seq order.
func TestStoreConcurrent(t *testing.T) {
	const writers, each = 8, 500
	s := flow.NewStore(256)
	sub := s.Subscribe(flow.Filter{}, writers*each)
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				s.Add(numbered(w*each + i))
				if i%50 == 0 {
					s.Last(10, flow.Filter{FromWorkload: "w1"})
					s.Stats()
				}
			}
		})
	}
	wg.Wait()
	sub.Close()
	var prev uint64
	n := 0
	for f := range sub.C() {
		if f.Seq <= prev {
			t.Fatalf("subscriber got seq %d after %d", f.Seq, prev)
		}
		prev = f.Seq
		n++
	}
	if n != writers*each || prev != writers*each {
		t.Errorf("subscriber got %d flows up to seq %d, want %d up to %d", n, prev, writers*each, writers*each)
	}
	if got := s.Stats(); got.Total != writers*each || got.Stored != 256 {
		t.Errorf("Stats() = %+v, want Total %d, Stored 256", got, writers*each)
	}
}

func BenchmarkStoreAdd(b *testing.B) {
	s := flow.NewStore(65536)
	f := numbered(1)
	b.ReportAllocs()
	for b.Loop() {
		s.Add(f)
	}
}

// One subscriber whose filter rejects the flow, and one follower that
// keeps up: the cost `sluice observe --follow` adds.
func BenchmarkStoreAddSubscribed(b *testing.B) {
	s := flow.NewStore(65536)
	other := s.Subscribe(flow.Filter{Namespace: "elsewhere"}, 1024)
	defer other.Close()
	follower := s.Subscribe(flow.Filter{}, 1024)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range follower.C() {
		}
	}()
	f := numbered(1)
	b.ReportAllocs()
	for b.Loop() {
		s.Add(f)
	}
	b.StopTimer()
	follower.Close()
	<-done
}

func BenchmarkStoreAddParallel(b *testing.B) {
	s := flow.NewStore(65536)
	f := numbered(1)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			s.Add(f)
		}
	})
}
