package main

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/sluice-mesh/sluice/dataplane"
	"github.com/sluice-mesh/sluice/dataplane/model"
)

// fakeDataplane writes as many entries per Apply as it is told to.
type fakeDataplane struct {
	mu      sync.Mutex
	written uint64
	next    uint64 // entries the next Apply writes
	fail    error
}

func (f *fakeDataplane) Apply(model.State) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return f.fail
	}
	f.written += f.next
	return nil
}

func (f *fakeDataplane) EntriesWritten() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.written
}

func (f *fakeDataplane) Status() dataplane.Status {
	return dataplane.Status{EntriesWritten: f.EntriesWritten()}
}

// Memory goes back to the kernel after a state that rewrote many entries,
// not after small changes, and not after a refused state.
func TestReleaseAfterLargeStates(t *testing.T) {
	dp := &fakeDataplane{}
	released := make(chan struct{}, 10)
	a := &releasingApplier{dp: dp, release: func() { released <- struct{}{} }}
	apply := func(entries uint64, fail error) error {
		dp.mu.Lock()
		dp.next, dp.fail = entries, fail
		dp.mu.Unlock()
		return a.Apply(model.State{})
	}
	waitReleased := func(want bool) {
		t.Helper()
		select {
		case <-released:
			if !want {
				t.Fatal("memory released after a small or refused state")
			}
		case <-time.After(200 * time.Millisecond):
			if want {
				t.Fatal("memory not released after a large state")
			}
		}
	}

	if err := apply(2*releaseAfter, nil); err != nil {
		t.Fatal(err)
	}
	waitReleased(true)
	if err := apply(12, nil); err != nil {
		t.Fatal(err)
	}
	waitReleased(false)
	refused := errors.New("capacity exhausted")
	if err := apply(3*releaseAfter, refused); !errors.Is(err, refused) {
		t.Fatalf("Apply error %v, want the dataplane's", err)
	}
	waitReleased(false)
	if err := apply(releaseAfter, nil); err != nil {
		t.Fatal(err)
	}
	waitReleased(true)
}
