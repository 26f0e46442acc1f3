UPDATE stock SET available = 0;
