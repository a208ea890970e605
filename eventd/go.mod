module github.com/flotilla/flotilla/eventd

go 1.26.8
