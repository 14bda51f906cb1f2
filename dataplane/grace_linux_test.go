package dataplane

import (
	"slices"
	"testing"
	"time"
)

// BenchmarkWaitForReaders measures the RCU grace period Apply waits for
// (in the background) before it updates the standby generation.
func BenchmarkWaitForReaders(b *testing.B) {
	var d []time.Duration
	for b.Loop() {
		start := time.Now()
		waitForReaders()
		d = append(d, time.Since(start))
	}
	slices.Sort(d)
	b.ReportMetric(float64(d[len(d)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(d[len(d)*99/100].Microseconds())/1000, "p99-ms")
}
