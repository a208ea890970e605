package store

import (
	"testing"

	"github.com/flotilla/flotilla/contentd/content"
	"github.com/flotilla/flotilla/contentd/content/contenttest"
)

func TestConformance(t *testing.T) {
	contenttest.Run(t, func(t *testing.T) content.Store { return newEnv(t).s }, contenttest.Options{Rounds: 300})
}
