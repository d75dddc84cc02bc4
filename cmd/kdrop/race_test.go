//go:build race

package main

// raceEnabled: the tests run with -race, so the kdrop they run is built
// with it too (the agent's and watch's goroutines run in that process).
const raceEnabled = true
