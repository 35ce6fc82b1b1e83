enum PlaceholderUnderstudyCore {}
