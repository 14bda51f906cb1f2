package xds

import (
	"runtime"
	"runtime/debug"
	"testing"
	"time"
)

func TestGarbageGrown(t *testing.T) {
	for _, tc := range []struct {
		live, objects uint64
		settled, want bool
	}{
		{0, 0, false, false},
		{40 << 20, 40 << 20, false, false},
		{40 << 20, 44 << 20, false, false}, // under an eighth
		{40 << 20, 46 << 20, false, true},  // over an eighth
		{8 << 20, 9 << 20, false, false},   // an eighth, but under 2 MiB
		{8 << 20, 11 << 20, false, true},
		{40 << 20, 30 << 20, false, false}, // swept below the last live heap
		{40 << 20, 42 << 20, true, true},   // settled: over 1 MiB
		{40 << 20, 40<<20 + 512<<10, true, false},
	} {
		if got := garbageGrown(tc.live, tc.objects, tc.settled); got != tc.want {
			t.Errorf("garbageGrown(%d MiB live, %d KiB objects, settled %v) = %v, want %v", tc.live>>20, tc.objects>>10, tc.settled, got, tc.want)
		}
	}
}

// With the runtime's own collections turned off, only collectIfGrown can
// collect: it does once the heap holds enough garbage, and not otherwise.
func TestCollectIfGrown(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	runtime.GC()
	c := &Client{}
	numGC := func() uint32 {
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.NumGC
	}
	waitGC := func(before uint32, wait time.Duration) bool {
		for deadline := time.Now().Add(wait); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
			if numGC() > before && !c.collecting.Load() {
				return true
			}
		}
		return false
	}

	before := numGC()
	c.collectIfGrown(false)
	if waitGC(before, 300*time.Millisecond) {
		t.Fatal("collected right after a collection")
	}
	var garbage [][]byte
	for range 64 {
		garbage = append(garbage, make([]byte, 1<<20))
	}
	garbage = nil
	before = numGC()
	c.collectIfGrown(false)
	if !waitGC(before, 5*time.Second) {
		t.Fatal("64 MiB of garbage were not collected")
	}

	// 1.5 MiB: too little right after a change, enough once settled.
	for range 3 {
		garbage = append(garbage, make([]byte, 512<<10))
	}
	garbage = nil
	before = numGC()
	c.collectIfGrown(false)
	if waitGC(before, 300*time.Millisecond) {
		t.Fatal("1.5 MiB of garbage were collected right after a change")
	}
	c.collectIfGrown(true)
	if !waitGC(before, 5*time.Second) {
		t.Fatal("1.5 MiB of garbage were not collected once settled")
	}
	_ = garbage
}
