package enrich

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/kdrop/kdrop/cmd/kdrop/line"
	"github.com/kdrop/kdrop/tracer"
)

// The Every loops end when Run returns, before Close frees the tracer's
// maps they read (they used to go on until they noticed ctx).
func TestEveryLoopsEndWithRun(t *testing.T) {
	p, err := New(context.Background(), tracer.Options{}, nil, nil, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	var calls atomic.Int64
	p.Every(context.Background(), time.Millisecond, func() { // not ctx: run's return alone must end it
		p.T.Stats() // reads the tracer's stats map
		calls.Add(1)
	})
	if err := p.Run(ctx, func(*line.Event) {}); err != nil {
		t.Fatal(err)
	}
	n := calls.Load()
	p.Close()
	time.Sleep(50 * time.Millisecond)
	if n == 0 || calls.Load() != n {
		t.Errorf("the loop ran %d times during run, %d after it returned", n, calls.Load()-n)
	}
}
