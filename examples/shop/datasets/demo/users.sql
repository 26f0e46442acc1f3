-- Demo customers (the services create their tables on start).
INSERT INTO users (id, email, name) VALUES
  (1, 'ada@example.com', 'Ada Lovelace'),
  (2, 'grace@example.com', 'Grace Hopper'),
  (3, 'alan@example.com', 'Alan Turing');
SELECT setval('users_id_seq', 3);
