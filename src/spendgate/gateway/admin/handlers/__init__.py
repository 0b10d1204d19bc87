"""The admin API's handlers, one module per resource. Each takes the request alone and finds the key
store and ledger in the app's ``AdminContext``; blocking store and ledger calls run in the threadpool."""
