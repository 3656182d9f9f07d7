"""Generation: `VideoPipeline` owns a request (check_inputs -> Request -> run), the tasks as frame
masks, prompt expansion."""
