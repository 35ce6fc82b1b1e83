enum PlaceholderWriteTap {}
